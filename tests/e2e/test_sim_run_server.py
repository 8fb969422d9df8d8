"""``fleet-sim run`` as a real evaluation (issue 14, point 3): 300 simulated devices, a
real ``fleet-sim run`` process, against ``fleet-server run`` on its defaults (SQLite, the
embedded amqtt broker).

What a user relies on: every device connects (the simulator falls back to MQTT 3.1.1 and
says so), the server sees them all online, the broker's log has no traceback, progress
and the summary reach a plain log file, a rerun with the same seed starts new boots, and
a run where nothing can connect says why and exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.support.server_process import ServerProcess, fleet_server

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DEVICES = 300

SCENARIO = """
[scenario]
name = "eval"
seed = 11
start = 2026-01-05T00:00:00Z
duration = "{duration}"
speed = 1
tick = "2s"
sample_interval = "5s"

[agent]
publish_interval = "10s"
software_version = "1.0.0"

[fleet]
devices = {devices}
id_prefix = "ev"
channel = "production"

[[fleet.models]]
name = "gw-100"
share = 1.0
serial_prefix = "GW1"

[[fleet.models.revisions]]
name = "rev-a"
share = 1.0

[[fleet.batches]]
name = "B1"
share = 1.0
production_date = 2025-10-14

[[fleet.regions]]
name = "eu"
share = 1.0
timezone = "UTC"
"""


def _scenario(tmp_path: Path, duration: str, devices: int = DEVICES) -> Path:
    path = tmp_path / f"eval-{duration}.toml"
    path.write_text(SCENARIO.format(duration=duration, devices=devices))
    return path


def _sim(args: list[str], log: Path, server: ServerProcess | None) -> subprocess.Popen[bytes]:
    """``fleet-sim run`` with stdout and stderr to ``log`` (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    if server is not None:
        env.update(FLEET_URL=server.api_url, FLEET_TOKEN=server.token)
    with log.open("wb") as handle:
        return subprocess.Popen(
            [str(BIN / "fleet-sim"), "run", *args], stdout=handle, stderr=subprocess.STDOUT, env=env
        )


def _summary(log: Path) -> dict[str, object]:
    line = [ln for ln in log.read_text().splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def _boot_ids(server: ServerProcess, device: str) -> set[str]:
    events = server.get(f"/api/v1/devices/{device}/events", limit=200).json()
    return {event["boot_id"] for event in events["items"]}


def test_300_devices_on_the_default_server(tmp_path: Path) -> None:
    with fleet_server(tmp_path / "server") as server:
        log = tmp_path / "sim.log"
        proc = _sim(
            [str(_scenario(tmp_path, "25s")), "--broker", server.broker_url, "--json"],
            log,
            server,
        )
        try:

            def all_online() -> bool:
                assert proc.poll() is None, log.read_text()
                summary = server.get("/api/v1/fleet/summary").json()
                return int(summary["presence"].get("online", 0)) >= DEVICES

            wait_for(all_online, timeout=25, interval=0.5)
            assert proc.wait(timeout=90) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
        text = log.read_text()
        summary = _summary(log)
        assert summary["connects"] >= DEVICES
        assert summary["protocol"] == "MQTT 3.1.1"
        assert "broker refused MQTT 5" in text  # said loudly, in the plain log
        assert summary["devices_taking_updates"] == DEVICES
        assert f"online {DEVICES}/{DEVICES}" in text  # progress lines in a plain log
        assert "Traceback" not in server.log(), server.log()[-4000:]
        first = _boot_ids(server, "ev-00001")
        assert first

        # the same seed again: the same devices, new boots (not deduplicated away)
        rerun = _sim(
            [str(_scenario(tmp_path, "12s")), "--broker", server.broker_url, "--json"],
            tmp_path / "rerun.log",
            server,
        )
        assert rerun.wait(timeout=60) == 0, (tmp_path / "rerun.log").read_text()
        wait_for(lambda: _boot_ids(server, "ev-00001") - first, timeout=60, interval=0.5)
        assert "Traceback" not in server.log(), server.log()[-4000:]


def test_nothing_connects_says_why_and_fails(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    log = tmp_path / "sim.log"
    proc = _sim(
        [
            str(_scenario(tmp_path, "12s", devices=3)),
            "--broker",
            f"mqtt://127.0.0.1:{port}",
            "--json",
        ],
        log,
        None,
    )
    assert proc.wait(timeout=60) == 1, log.read_text()
    text = log.read_text()
    assert "no device connected after" in text
    assert f"no device ever connected to mqtt://127.0.0.1:{port}" in text
    assert "refused" in text.lower()
    summary = _summary(log)
    assert summary["connects"] == 0
    assert "no device ever connected" in str(summary["error"])


def test_live_run_against_a_server_with_no_listener_does_not_hang() -> None:
    """A server URL that answers nothing fails at the TUF root with one clear line."""
    url = f"http://127.0.0.1:{free_port()}"
    from simulator.live_run import fetch_tuf_root

    with pytest.raises(OSError, match="cannot read"):
        fetch_tuf_root(url, timeout=2)
