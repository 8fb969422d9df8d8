"""The README's "The first hour", run as written (issue 14: every command in it is run
by a test, so the walkthrough cannot drift from the product).

The files (`first-hour.toml`, `first-hour-policy.json`) and the shell block are taken
from README.md itself and run with bash in an empty directory: a real ``fleet-server
run`` (SQLite, embedded broker), the fleet imported from the simulator's factory CSV, a
live ``fleet-sim run`` taking a real staged rollout over TUF, a group and a webhook.
The test only moves the two ports (``FLEET_API_PORT``, ``FLEET_MQTT_EMBEDDED_PORT``) and
gives ``HOOK_URL`` a real receiver on loopback; then it waits for what the README
promises: the rollout completes, every device commits 1.2.0, the receiver gets a signed
``rollout.completed``, and the server's log has no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleet_server.domain import webhooks as rules
from tests.conftest import free_port, wait_for
from tests.support.webhook_receiver import start_receiver

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```(\w+) ([\w.-]+)\n(.*?)^```$", re.S | re.M)


def walkthrough() -> dict[str, str]:
    """The README's first-hour blocks by name (``first-hour.toml``, ..., ``first-hour``
    for the shell commands)."""
    section = README.read_text().split("## The first hour", 1)[1].split("\n## ", 1)[0]
    return {name: body for _lang, name, body in FENCE.findall(section)}


def test_the_readme_names_its_files_and_commands() -> None:
    blocks = walkthrough()
    assert set(blocks) == {"first-hour.toml", "first-hour-policy.json", "first-hour"}
    json.loads(blocks["first-hour-policy.json"])
    commands = [ln for ln in blocks["first-hour"].splitlines() if ln and not ln.startswith("#")]
    for tool in ("fleet-server run", "fleetctl devices import", "fleet-sim run", "rollout start"):
        assert any(tool in ln for ln in commands), tool


def test_the_first_hour_as_written(tmp_path: Path) -> None:
    blocks = walkthrough()
    for name in ("first-hour.toml", "first-hour-policy.json"):
        (tmp_path / name).write_text(blocks[name])
    receiver = start_receiver()
    api_port, broker_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path),
        FLEET_API_PORT=str(api_port),
        FLEET_MQTT_EMBEDDED_PORT=str(broker_port),
        HOOK_URL=receiver.url,
    )
    script = "set -euo pipefail\n" + blocks["first-hour"]
    # Its own session: the server and the simulator it starts in the background are
    # stopped with it at the end.
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out = shell.communicate(timeout=240)[0].decode(errors="replace")
        assert shell.returncode == 0, out + _log(tmp_path, "server.log")
        assert "imported 12 device(s)" in out
        assert "targeted: 12 device(s)" in out  # the dry run
        token = json.loads((tmp_path / "init.json").read_text())["admin_token"]
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        rollout = api.get("/api/v1/rollouts").json()["items"][0]

        def finished() -> bool:
            state = api.get(f"/api/v1/rollouts/{rollout['id']}").json()["state"]
            assert state not in ("halted", "cancelled", "rolled_back"), state
            return bool(state == "completed")

        started = time.monotonic()
        wait_for(finished, timeout=180, interval=1)
        print(f"commands run; the rollout completed {time.monotonic() - started:.0f} s later")
        devices = api.get("/api/v1/devices", params={"limit": 100}).json()["items"]
        assert {d["software_version"] for d in devices} == {"1.2.0"}, devices
        assert len(devices) == 12
        wait_for(lambda: bool(receiver.requests), timeout=60, interval=0.5)
        got = receiver.requests[0]
        assert json.loads(got.body)["type"] == "rollout.completed"
        assert rules.TIMESTAMP_HEADER in got.headers
        assert "Traceback" not in _log(tmp_path, "server.log")
    finally:
        receiver.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=30)


def _log(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""
