"""The job scheduler runs each job at its interval and survives a failing job."""

from __future__ import annotations

from typing import Any

from fleet_server.config import Settings
from fleet_server.services.jobs import Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jobs_run_when_due_and_a_failure_does_not_stop_the_others() -> None:
    clock = Clock()
    scheduler = Scheduler(None, Settings(), clock)  # type: ignore[arg-type]
    scheduler.jobs.clear()
    calls: list[tuple[str, float]] = []

    def ok(_s: Any, _c: Any, now: float) -> None:
        calls.append(("ok", now))

    def broken(_s: Any, _c: Any, _now: float) -> None:
        raise RuntimeError("database unreachable")

    scheduler.add_job("ok", 10, ok)
    scheduler.add_job("broken", 5, broken)
    wait = scheduler.run_due()
    assert calls == [("ok", 1000.0)]
    assert wait == 5
    clock.now += 5
    scheduler.run_due()
    assert calls == [("ok", 1000.0)]  # not due yet
    clock.now += 5
    scheduler.run_due()
    assert calls == [("ok", 1000.0), ("ok", 1010.0)]
