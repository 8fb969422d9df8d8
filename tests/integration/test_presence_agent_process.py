"""Presence holds with the real ``fleet-agent`` process on its defaults (issue 14, item 1).

A real ``fleet-agent run`` (its own process, its default MQTT settings: keepalive 30 s,
MQTT 5 falling back where refused) against a real Mosquitto, the real ingest and
PostgreSQL. Only the publish and sample intervals are shortened in its config file, so
several publish intervals pass in a few seconds. The server's presence sweep runs on its
default settings throughout and never times the connected device out; a clean stop is
seen as offline at once (the agent's own offline message, not a timeout).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_server.config import Settings
from fleet_server.db.models import Device
from fleet_server.services.presence import sweep_presence
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.test_agent_to_server import (  # noqa: F401  (fixtures)
    ServerIngest,
    broker,
    server,
)
from tests.support.agent_process import fleet_agent, write_config

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]

PUBLISH_S = 2.0
INTERVALS = 4


def _device(ingest: ServerIngest, device_id: str) -> Device | None:
    with ingest.sessions() as s:
        return s.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()


def test_a_real_agent_process_on_defaults_never_flaps(
    broker: MosquittoBroker,  # noqa: F811
    server: ServerIngest,  # noqa: F811
    tmp_path: Path,
) -> None:
    device_id = "pi-proc-1"
    config = write_config(
        tmp_path / "agent.toml",
        {
            "device_id": device_id,
            "broker": broker.url,
            "state_dir": str(tmp_path / "state"),
            "publish_interval_s": PUBLISH_S,
            "sample_interval_s": PUBLISH_S / 4,
        },
        {},
    )
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [fleet_agent(), "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    defaults = Settings().presence
    try:

        def online() -> bool:
            assert proc.poll() is None, (tmp_path / "agent.log").read_text()
            device = _device(server, device_id)
            return device is not None and device.presence == "online"

        wait_for(online, timeout=30)
        # one publish at least, so the announced interval is known
        wait_for(lambda: (d := _device(server, device_id)) is not None and bool(d.interval_s))
        device = _device(server, device_id)
        assert device is not None
        assert (device.interval_s, device.keepalive_s) == (PUBLISH_S, 30)  # agent defaults
        seen: set[str] = set()
        deadline = time.monotonic() + INTERVALS * PUBLISH_S
        while time.monotonic() < deadline:
            with server.sessions() as s, s.begin():
                gone = sweep_presence(
                    s,
                    now=time.time(),
                    default_keepalive_s=defaults.default_keepalive_s,
                    default_interval_s=defaults.default_interval_s,
                    factor=defaults.timeout_factor,
                )
            assert device_id not in gone, "the sweep timed out a connected agent"
            current = _device(server, device_id)
            assert current is not None
            seen.add(current.presence)
            time.sleep(0.25)  # the sweep's cadence (scaled down), not a wait for a result
        assert seen == {"online"}
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()
    wait_for(lambda: (d := _device(server, device_id)) is not None and d.presence == "offline")
    device = _device(server, device_id)
    assert device is not None
    assert device.presence_reason != "timeout", device.presence_reason
