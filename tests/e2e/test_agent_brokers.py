"""The agent meets every broker (issue 12): a real ``fleet-agent run`` process against
the default fleet server (SQLite, embedded MQTT 3.1.1 broker) and against real Mosquitto
brokers that refuse it or are spoken to in MQTT 3.1.1 only.

Each test reads what a user would: the telemetry through the server's API, the agent's
own log lines, the presence and last will as a subscriber sees them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from protocol import (
    CheckUpdate,
    CommandAck,
    Kind,
    Presence,
    PresenceState,
    Telemetry,
    decode,
    topic,
)
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import Receiver
from tests.support.agent_process import Supervisor, write_config
from tests.support.server_process import fleet_server
from tests.support.update_device import DEVICE, Operator

pytestmark = pytest.mark.slow


def _agent(tmp_path: Path, broker: str, **settings: Any) -> Supervisor:
    """A ``fleet-agent run`` for ``broker`` with ``settings`` (nothing else is set but the
    device id, where it keeps its state, and short intervals so the test is quick)."""
    state_dir = tmp_path / "agent-state"
    log_dir = tmp_path / "agent-logs"
    log_dir.mkdir()
    top = {
        "device_id": DEVICE,
        "broker": broker,
        "state_dir": str(state_dir),
        "sample_interval_s": 0.5,
        "publish_interval_s": 1.0,
        **settings,
    }
    config = write_config(tmp_path / "agent.toml", top, {})
    return Supervisor(config, state_dir, log_dir)


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Build (not start) one agent; whatever still runs is killed at the end."""
    made: list[Supervisor] = []

    def make(broker: str, **settings: Any) -> Supervisor:
        made.append(_agent(tmp_path, broker, **settings))
        return made[-1]

    yield make
    for agent in made:
        agent.kill()


def _log(agent: Supervisor) -> str:
    return "\n".join(p.read_text() for p in sorted(agent.log_dir.glob("agent-*.log")))


def test_agent_reports_to_the_default_server_and_its_embedded_broker(
    tmp_path: Path, agent_factory: Callable[..., Supervisor]
) -> None:
    """``fleet-server init && fleet-server run`` with its defaults, then a real agent given
    only the broker URL: its telemetry can be read back through the API, and its last
    will (not the server's timeout) marks it offline when it dies."""
    with fleet_server(tmp_path / "server") as server:
        created = server.post("/api/v1/devices", {"device_id": DEVICE, "model": "gw-100"})
        assert created.status_code == 201, created.text
        agent = agent_factory(server.broker_url)
        agent.start()

        def telemetry() -> list[dict[str, Any]]:
            assert agent.proc is not None
            assert agent.proc.poll() is None, _log(agent)
            r = server.get(f"/api/v1/devices/{DEVICE}/telemetry", limit=10)
            return list(r.json()["items"]) if r.status_code == 200 else []

        try:
            samples = wait_for(telemetry, timeout=60, interval=0.2)
        except TimeoutError:
            pytest.fail(f"no telemetry\nagent:\n{_log(agent)}\nserver:\n{server.log()[-3000:]}")
        assert isinstance(samples, list)
        assert all(isinstance(s["cpu_pct"], float) for s in samples)
        device = server.get(f"/api/v1/devices/{DEVICE}").json()
        assert device["presence"] == "online"
        assert device["agent_version"]
        # amqtt speaks MQTT 3.1.1 only: auto fell back once and kept it.
        assert "speaks MQTT 3.1.1" in _log(agent)
        agent.kill()  # the embedded broker publishes the agent's last will at once

        def offline() -> bool:
            device = server.get(f"/api/v1/devices/{DEVICE}").json()
            return device["presence"] == "offline" and device["presence_reason"] == "offline"

        wait_for(offline, timeout=30, interval=0.2)


@pytest.mark.mosquitto
def test_agent_logs_a_refused_connection_with_the_reason(
    mosquitto_factory: Callable[..., MosquittoBroker],
    agent_factory: Callable[..., Supervisor],
) -> None:
    """A broker that refuses the device (no anonymous access): every failed attempt is
    logged with the broker's reason, and the queued count at most once a minute."""
    broker = mosquitto_factory("listener {port} 127.0.0.1\nallow_anonymous false\n")
    agent = agent_factory(broker.url, reconnect_min_s=0.1, reconnect_max_s=0.3)
    agent.start()

    def refusals() -> list[str]:
        return re.findall(r"cannot connect to .*", _log(agent))

    wait_for(lambda: len(refusals()) >= 3, timeout=30, interval=0.1)
    lines = refusals()
    assert all("Not authorized" in line for line in lines), lines
    assert "not authorised" in lines[0]
    assert f"cannot connect to {broker.url} (MQTT 5)" in lines[0]
    log = _log(agent)
    assert len(re.findall(r"offline for \d+s: \d+ messages queued", log)) == 1, log
    assert "trying MQTT 3.1.1" not in log  # a refusal is not a protocol problem
    assert agent.stop() == 0


@pytest.mark.mosquitto
@pytest.mark.parametrize("version", ["3.1.1", "auto"])
def test_presence_last_will_and_session_hold_in_each_mqtt_version(
    version: str, mosquitto: MosquittoBroker, agent_factory: Callable[..., Supervisor]
) -> None:
    """Forced to MQTT 3.1.1 (or ``auto``, which gets MQTT 5 from Mosquitto), the agent
    has a retained presence, a retained last will saying offline with the same boot id,
    QoS 1 delivery, and a persistent session: a command sent while it is down arrives
    when it comes back."""
    receiver = Receiver(mosquitto.host, mosquitto.port)
    operator = Operator(mosquitto.host, mosquitto.port)
    agent = agent_factory(mosquitto.url, mqtt_version=version, keepalive=5)
    try:
        assert receiver.subscribed.wait(10)
        agent.start()

        def online() -> Presence | None:
            found = [p for p in receiver.of(Presence) if p.state is PresenceState.ONLINE]
            return found[-1] if found else None

        presence = wait_for(online, timeout=30, interval=0.05)
        assert isinstance(presence, Presence)
        wait_for(lambda: receiver.of(Telemetry), timeout=30, interval=0.05)
        agent.kill()  # SIGKILL: no DISCONNECT, the broker publishes the last will

        def offline() -> list[Presence]:
            return [p for p in receiver.of(Presence) if p.state is PresenceState.OFFLINE]

        will = wait_for(offline, timeout=30, interval=0.05)
        assert isinstance(will, list)
        assert will[-1].boot_id == presence.boot_id
        newcomer = mqtt_retained(mosquitto, topic(DEVICE, Kind.PRESENCE))
        assert isinstance(newcomer, Presence)
        assert newcomer.state is PresenceState.OFFLINE
        assert newcomer.boot_id == presence.boot_id

        command_id = operator.send(CheckUpdate)  # the device is down: the session keeps it
        agent.start()

        def acked() -> bool:
            return any(a.command_id == command_id for a in receiver.of(CommandAck))

        wait_for(acked, timeout=30, interval=0.05)
    finally:
        receiver.close()
        operator.close()
    log = _log(agent)
    if version == "auto":
        assert "speaks MQTT 5" in log
    else:
        assert "speaks MQTT" not in log  # forced, not negotiated
    assert "cannot connect" not in log


def mqtt_retained(broker: MosquittoBroker, name: str) -> object:
    """What a newcomer subscribing to ``name`` receives first (the retained message)."""
    got: list[object] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="newcomer", protocol=mqtt.MQTTv311)
    client.on_message = lambda _c, _u, message: got.append(
        decode(message.topic, bytes(message.payload)) if message.retain else None
    )
    client.connect(broker.host, broker.port)
    client.subscribe(name, qos=1)
    client.loop_start()
    try:
        wait_for(lambda: got, timeout=10, interval=0.02)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0]
