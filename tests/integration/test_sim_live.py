"""Live mode against a real Mosquitto: one connection per device, one event loop for all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

import protocol as p
from simulator.engine import build_devices
from simulator.live import LiveEngine
from simulator.scenario import parse_scenario
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import Receiver

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def receiver(mosquitto: MosquittoBroker) -> Iterator[Receiver]:
    rx = Receiver(mosquitto.host, mosquitto.port)
    wait_for(rx.subscribed.is_set, timeout=10)
    yield rx
    rx.close()


def live_scenario() -> Any:
    return parse_scenario(
        {
            "scenario": {
                "name": "live",
                "seed": 5,
                "duration": "1h",
                "tick": "10s",
                "sample_interval": "1m",
            },
            "agent": {"publish_interval": "5m"},
            "fleet": {
                "devices": 4,
                "id_prefix": "live",
                "models": [{"name": "m", "share": 1.0, "revisions": [{"name": "r", "share": 1}]}],
                "batches": [{"name": "b", "share": 1.0}],
                "regions": [{"name": "eu", "share": 1.0, "timezone": "UTC"}],
            },
            "events": [
                {
                    "at": "20m",
                    "kind": "partition",
                    "duration": "10m",
                    "select": {"devices": ["live-00001"]},
                }
            ],
        }
    )


def test_devices_deliver_everything_through_their_own_connections(
    mosquitto: MosquittoBroker, receiver: Receiver
) -> None:
    sc = live_scenario()
    devices = build_devices(sc)
    # 300x: the 10-minute partition lasts 2 s of real time, long enough to be seen on a
    # loaded machine (at 900x it was 0.7 s and a slow connect could miss it).
    engine = LiveEngine(devices, mosquitto.host, mosquitto.port, start=sc.start, speed=300.0)
    target = devices[1]

    async def main() -> None:
        task = asyncio.create_task(engine.run(sc.start + sc.duration_s))
        deadline = time.monotonic() + 20
        while not engine.conns[1].connected:  # poll with a deadline, then send a command
            assert time.monotonic() < deadline, "device never connected"
            await asyncio.sleep(0.01)
        command = p.Reboot(
            device_id=target.device_id,
            boot_id="server",
            seq=1,
            ts=target.device_time(),
            id="cmd-1",
            expires_at=target.device_time() + 3600,
        )
        receiver.client.publish(p.topic(target.device_id, p.Kind.COMMAND), p.encode(command), qos=1)
        await task

    asyncio.run(main())
    assert engine.stats.connects >= 5  # four devices, one of them twice (partition)

    def telemetry_done() -> bool:
        got: dict[str, set[float]] = {d.device_id: set() for d in devices}
        for m in receiver.snapshot():
            if isinstance(m, p.Telemetry):
                got[m.device_id].update(s.ts for s in m.samples)
        return all(len(got[d.device_id]) == d.stats.samples for d in devices)

    wait_for(telemetry_done, timeout=20)
    messages = receiver.snapshot()
    assert not receiver.rejected
    by_key: dict[tuple[str, str, int], list[Any]] = {}
    for m in messages:
        if isinstance(m, p.Telemetry | p.Boot | p.CommandAck):
            by_key.setdefault((m.device_id, m.boot_id, m.seq), []).append(m)
    # QoS 1 may resend what was in flight when a link died, but a seq is never reused
    assert all(all(x == group[0] for x in group) for group in by_key.values())
    assert all(d.outbox.depth() == 0 for d in devices)

    cut = [m.state for m in messages if isinstance(m, p.Presence) and m.device_id == "live-00001"]
    assert cut == ["online", "offline", "online", "offline"]  # will at the cut, clean stop

    unique = sorted((key, group[0]) for key, group in by_key.items() if key[0] == target.device_id)
    events = [m for _, m in sorted(unique, key=lambda kv: kv[0][2])]
    acks = [m for m in events if isinstance(m, p.CommandAck) and m.command_id == "cmd-1"]
    assert [a.status for a in acks] == [p.AckStatus.ACCEPTED, p.AckStatus.COMPLETED]
    boots = [m for m in events if isinstance(m, p.Boot)]
    assert [b.reason for b in boots] == [
        int(p.RebootReason.POWER_ON),
        int(p.RebootReason.REMOTE_COMMAND),
    ]
