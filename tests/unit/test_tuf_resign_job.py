"""The re-signing job: re-signs when due, survives failures, stops when asked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from fleet_server.updates.resign_job import ResignJob
from fleet_server.updates.tuf_repository import utc_now
from tests.support.tuf_world import make_world


def test_tick_resigns_when_due_and_survives_a_missing_key(tmp_path: Path) -> None:
    world = make_world(tmp_path, examples=("good-1.1.0",))
    job = ResignJob(world.repo)
    soon = utc_now() + timedelta(hours=20)
    result = job.tick(soon)
    assert result is not None
    assert result.resigned == ["timestamp"]
    for key in (tmp_path / "server-keys").glob("*.pem"):
        key.unlink()
    assert job.tick(soon + timedelta(days=1)) is None
    assert job.failures == 1
    assert job.last_error is not None
    assert "no private key" in job.last_error


def test_run_loop_stops_on_request(tmp_path: Path) -> None:
    world = make_world(tmp_path, examples=("good-1.1.0",))
    job = ResignJob(world.repo, interval_s=3600)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(job.run(stop))
        deadline = asyncio.get_running_loop().time() + 10
        while job.last_result is None:  # poll with a deadline: the first tick ran
            assert asyncio.get_running_loop().time() < deadline, "the first tick never ran"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    asyncio.run(main())
    assert job.failures == 0
