"""Presence and device clocks with the real agent daemon, a real Mosquitto, the real
ingest and PostgreSQL (issue 14, items 1 and 2).

* Presence holds: an agent publishing at several intervals (the default ratio of publish
  interval to keepalive, 2:1, and shorter) is never timed out by the server's sweep on
  its default settings, polled for several publish intervals.
* A clock running an hour ahead is measured on every message, raises ``clock_skew``,
  and once the device is back on a correct clock (a new boot that lost its state) its
  presence and latest vitals follow the server's receipt, not the old future stamps.
* Commands built by the server carry a TTL the agent judges from receipt: an agent whose
  clock runs ahead accepts them, while a bare ``expires_at`` in server time is refused
  with ISO dates in the reason.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from msgspec.structs import replace
from sqlalchemy import select

from fleet_server.config import Settings
from fleet_server.db.models import Alarm, Device
from fleet_server.domain.clock_skew import CLOCK_SKEW
from fleet_server.services.commands import build_command
from fleet_server.services.presence import sweep_presence
from protocol import (
    AckStatus,
    CommandAck,
    Presence,
    PresenceState,
    RejectReason,
    encode,
    topic,
)
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import (
    CountingCollector,
    Receiver,
    RunningAgent,
    agent_config,
)
from tests.integration.test_agent_to_server import (  # noqa: F401  (fixtures)
    ServerIngest,
    broker,
    server,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]

AHEAD_S = 3600.0


class AheadClock:
    """The real clock with a wall clock running ``ahead`` seconds fast (a bad RTC)."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time() + self.ahead

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _device(ingest: ServerIngest, device_id: str) -> Device | None:
    with ingest.sessions() as s:
        return s.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()


@pytest.mark.parametrize("publish_s", [2.5, 7.5])
def test_an_agent_at_its_publish_interval_never_flaps_offline_on_default_settings(
    broker: MosquittoBroker,  # noqa: F811
    server: ServerIngest,  # noqa: F811
    tmp_path: Path,
    publish_s: float,
) -> None:
    device_id = f"pi-flap-{int(publish_s * 10)}"
    config = agent_config(
        broker.url,
        tmp_path / "state",
        device_id=device_id,
        publish_interval_s=publish_s,
        sample_interval_s=publish_s / 5,
        keepalive=5,
    )
    defaults = Settings().presence
    agent = RunningAgent(config, CountingCollector())
    try:
        wait_for(lambda: (d := _device(server, device_id)) is not None and d.presence == "online")
        device = _device(server, device_id)
        assert device is not None
        assert device.interval_s == publish_s
        assert device.keepalive_s == 5
        seen = []
        deadline = time.monotonic() + 3 * publish_s + 1
        while time.monotonic() < deadline:
            with server.sessions() as s, s.begin():
                gone = sweep_presence(
                    s,
                    now=time.time(),
                    default_keepalive_s=defaults.default_keepalive_s,
                    default_interval_s=defaults.default_interval_s,
                    factor=defaults.timeout_factor,
                )
            assert device_id not in gone, "the sweep timed out a healthy connected device"
            current = _device(server, device_id)
            assert current is not None
            seen.append(current.presence)
            time.sleep(0.2)  # the sweep's own cadence (scaled), not a wait for a result
        assert set(seen) == {"online"}
    finally:
        agent.stop()
    wait_for(lambda: (d := _device(server, device_id)) is not None and d.presence == "offline")


def test_a_clock_running_ahead_is_measured_alarmed_and_does_not_freeze_the_device(
    broker: MosquittoBroker,  # noqa: F811
    server: ServerIngest,  # noqa: F811
    tmp_path: Path,
) -> None:
    device_id = "pi-ahead-1"
    ahead = RunningAgent(
        agent_config(broker.url, tmp_path / "a", device_id=device_id),
        CountingCollector(),
        clock=AheadClock(AHEAD_S),
    )
    try:
        wait_for(
            lambda: (
                (d := _device(server, device_id)) is not None
                and d.clock_offset_s is not None
                and d.vitals_ts is not None
            )
        )
        device = _device(server, device_id)
        assert device is not None
        assert device.clock_offset_s is not None
        assert AHEAD_S - 5 < device.clock_offset_s < AHEAD_S + 1
        assert device.presence == "online"
        # Latest vitals are stamped by server receipt, not an hour in the future.
        assert device.vitals_ts is not None
        assert device.vitals_ts < time.time() + 5
        with server.sessions() as s:
            alarm = s.execute(
                select(Alarm).where(
                    Alarm.device_key == device.id, Alarm.code == CLOCK_SKEW, Alarm.state == "open"
                )
            ).scalar_one()
            assert "ahead" in (alarm.message or "")
    finally:
        ahead.stop()  # its clean stop publishes an offline stamped an hour ahead
    wait_for(lambda: (d := _device(server, device_id)) is not None and d.presence == "offline")

    # The RTC is fixed and the device lost its state (seq restarts): a new boot must win
    # over the future-stamped offline, and fresh vitals must replace the old ones.
    fixed = RunningAgent(
        agent_config(broker.url, tmp_path / "b", device_id=device_id), CountingCollector()
    )
    try:
        started = time.time()
        wait_for(
            lambda: (
                (d := _device(server, device_id)) is not None
                and d.presence == "online"
                and (d.vitals_ts or 0) >= started - 1
            ),
            timeout=20,
        )
        with server.sessions() as s:
            key = s.execute(select(Device.id).where(Device.device_id == device_id)).scalar_one()
            wait_for(
                lambda: (
                    s.execute(
                        select(Alarm.state).where(Alarm.device_key == key, Alarm.code == CLOCK_SKEW)
                    ).scalar_one()
                    == "cleared"
                )
            )
    finally:
        fixed.stop()


def test_a_server_command_reaches_an_agent_whose_clock_runs_ahead(
    broker: MosquittoBroker,  # noqa: F811
    tmp_path: Path,
) -> None:
    device_id = "pi-test-1"
    receiver = Receiver(broker.host, broker.port)
    wait_for(receiver.subscribed.is_set, timeout=10)
    agent = RunningAgent(
        agent_config(broker.url, tmp_path / "s", device_id=device_id),
        CountingCollector(),
        clock=AheadClock(AHEAD_S),
    )
    try:
        # The agent subscribes to its commands before it says it is online, and a broker
        # handles one client's packets in order: once its presence has come through, the
        # agent's subscription (and the receiver's) is in place and no command is lost.
        wait_for(lambda: any(p.state is PresenceState.ONLINE for p in receiver.of(Presence)))
        now = time.time()
        # What the server sends: ttl_s, judged by the agent from receipt.
        with_ttl = build_command("check_update", device_id, "cmd-ttl-1", now, now + 300)
        # What an old server sent: only expires_at, in server time (an hour in the agent's past).
        bare = build_command("check_update", device_id, "cmd-bare-1", now, now + 300)
        client_send = receiver.client.publish
        client_send(topic(device_id, "command"), encode(with_ttl), qos=1)
        client_send(topic(device_id, "command"), encode(replace(bare, ttl_s=None)), qos=1)

        def ack(command_id: str) -> CommandAck | None:
            acks = [a for a in receiver.of(CommandAck) if a.command_id == command_id]
            return acks[-1] if acks else None

        wait_for(lambda: ack("cmd-ttl-1") is not None and ack("cmd-bare-1") is not None)
        ttl_ack, bare_ack = ack("cmd-ttl-1"), ack("cmd-bare-1")
        assert ttl_ack is not None
        assert bare_ack is not None
        assert ttl_ack.reason is not RejectReason.EXPIRED
        assert bare_ack.status is AckStatus.REJECTED
        assert bare_ack.reason is RejectReason.EXPIRED
        assert re.search(r"expired at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bare_ack.detail)
        assert str(int(now)) not in bare_ack.detail
    finally:
        agent.stop()
        receiver.close()
