"""The NATS back-end's pure parts: subject mapping, ``[nats]`` settings, the agent's
broker list and its move to the next node when one cannot be reached."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ConfigError as AgentConfigError
from agent.config import parse_config
from agent.startup import mqtt_settings
from agent.transport import MqttSettings, MqttTransport
from fleet_server.adapters.nats_conn import subject_for_topic, topic_for_subject
from fleet_server.config import ConfigError, load_settings
from fleet_server.errors import InvalidInputError
from tests.conftest import free_port


def test_topics_map_to_subjects_and_back() -> None:
    assert subject_for_topic("fleet/v1/pi-1/command") == "fleet.v1.pi-1.command"
    assert topic_for_subject("$MQTT.msgs.fleet.v1.pi-1.telemetry") == "fleet/v1/pi-1/telemetry"
    assert topic_for_subject("fleet.v1.pi//1.event") == "fleet/v1/pi.1/event"


def test_a_device_id_with_a_dot_is_refused_clearly() -> None:
    with pytest.raises(InvalidInputError, match=r"contains '\.'.*\[nats\] back-end"):
        subject_for_topic("fleet/v1/pi.1/command")


def test_nats_settings_from_file_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text('[nats]\nservers = ["nats://n1:4222", "tls://n2:4222"]\nreplicas = 3\n')
    s = load_settings(cfg, env={})
    assert s.nats.enabled
    assert s.nats.servers == ["nats://n1:4222", "tls://n2:4222"]
    env = {"FLEET_NATS_SERVERS": "nats://a:4222, nats://b:4222"}
    assert load_settings(None, env=env).nats.servers == ["nats://a:4222", "nats://b:4222"]
    assert not load_settings(None, env={}).nats.enabled
    with pytest.raises(ConfigError, match=r"nats\.servers"):
        load_settings(None, env={"FLEET_NATS_SERVERS": "mqtt://a:1883"})


def test_agent_broker_may_be_a_list_of_nodes() -> None:
    base = {"device_id": "pi-1"}
    config = parse_config({**base, "broker": ["mqtt://n1:1883", "mqtt://n2:1884", "mqtt://n3"]})
    assert (config.broker_host, config.broker_port) == ("n1", 1883)
    assert config.broker_alternates == (("n2", 1884), ("n3", 1883))
    assert mqtt_settings(config).nodes == (("n1", 1883), ("n2", 1884), ("n3", 1883))
    with pytest.raises(AgentConfigError, match="one scheme"):
        parse_config({**base, "broker": ["mqtt://n1:1883", "mqtts://n2:8883"]})
    with pytest.raises(AgentConfigError, match="broker"):
        parse_config({**base, "broker": ["mqtt://n1:1883", 5]})


def test_transport_moves_to_the_next_node_when_one_is_down() -> None:
    down, other = free_port(), free_port()
    settings = MqttSettings(
        "127.0.0.1",
        down,
        "pi-1",
        "fleet/v1/pi-1/command",
        mqtt_version="3.1.1",
        alternates=(("127.0.0.1", other),),
    )
    transport = MqttTransport(settings)
    assert transport.node == ("127.0.0.1", down)
    with pytest.raises(OSError, match="refused"):
        transport.connect("fleet/v1/pi-1/presence", b"offline")
    assert transport.node == ("127.0.0.1", other)
    with pytest.raises(OSError, match="refused"):
        transport.connect("fleet/v1/pi-1/presence", b"offline")
    assert transport.node == ("127.0.0.1", down)


def test_production_on_nats_needs_tls_to_every_node_and_a_service_certificate() -> None:
    from fleet_server.config import Settings
    from fleet_server.security_mode import production_problems

    settings = Settings.model_validate(
        {
            "security": {"mode": "production"},
            "nats": {"servers": ["tls://n1:4222", "nats://n2:4222"]},
        }
    )
    keys = {p.key for p in production_problems(settings, exists=lambda _p: True)}
    assert {"nats.servers", "nats.tls_ca", "nats.tls_cert", "nats.tls_key"} <= keys
    assert not {k for k in keys if k.startswith(("mqtt.", "tls.mqtt", "tls.command"))}


class _StubTransport:
    connected = True

    def __init__(self) -> None:
        self.mid = 0

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        self.mid += 1
        return self.mid


def test_delivery_notices_acknowledgements_that_stopped() -> None:
    from agent.delivery import Delivery
    from agent.store import MemoryOutbox

    now = [100.0]
    outbox = MemoryOutbox()
    outbox.put(1, "fleet/v1/pi-1/telemetry", b"x", 100.0)
    outbox.put(2, "fleet/v1/pi-1/telemetry", b"y", 100.0)
    delivery = Delivery(outbox, _StubTransport(), clock=lambda: now[0])  # type: ignore[arg-type]
    assert not delivery.stalled(60)
    delivery.pump()
    now[0] += 50
    delivery.on_published(1, True)  # progress: the clock restarts
    now[0] += 50
    assert not delivery.stalled(60)
    now[0] += 11
    assert delivery.stalled(60)
    delivery.reset()  # a new connection sends again
    assert not delivery.stalled(60)


@pytest.mark.parametrize("samples", [1, 6, 10])
def test_a_settled_worker_does_not_collect_on_every_batch(samples: int) -> None:
    """Batches flow as in a worker (fetched messages, then their records and decoded
    messages; one batch written while the next is fetched) with ``samples`` samples a
    message (the agent sends six by default): once the heap is settled for the fetch
    size, no young collection runs, where the old fixed threshold ran one per batch."""
    import gc

    from nats.aio.msg import Msg

    import protocol as p
    from fleet_server.adapters.nats_conn import settle_heap
    from fleet_server.services.ingest import Inbound

    batch = 2000
    payloads = [
        p.encode(
            p.Telemetry(
                device_id=f"d-{n % 100}",
                boot_id="b1",
                seq=n + 1,
                ts=1.0e9 + n,
                samples=[
                    p.Sample(ts=1.0e9 + n + s, cpu_pct=12.5, temp_c=51.0) for s in range(samples)
                ],
            )
        )
        for n in range(batch)
    ]
    headers = {"Nmqtt-Pub": "1"}

    def fetch(r: int) -> list[Msg]:
        return [
            Msg(
                None,
                f"$MQTT.msgs.fleet.v1.d-{n % 100}.telemetry",
                f"$JS.ACK.{r}.{n}",
                data,
                dict(headers),
            )
            for n, data in enumerate(payloads)
        ]

    young: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            young.append(1)

    threshold = gc.get_threshold()
    gc.callbacks.append(count)
    try:
        settle_heap(batch)
        fetched = fetch(0)
        for r in range(1, 6):
            records = [
                Inbound(p.topic(f"d-{n % 100}", p.Kind.TELEMETRY), m.data, 1.0e9)
                for n, m in enumerate(fetched)
            ]
            following = fetch(r)  # fetched while this batch is written
            decoded = [(rec, p.decode(rec.topic, rec.payload)) for rec in records]
            assert len(decoded) == batch
            fetched = following  # acknowledged and dropped
            del records, decoded
    finally:
        gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert young == []
