"""The real services the suite depends on work, and the protocol travels through them."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import protocol as p
from protocol import Kind, decode, encode, topic

pytestmark = pytest.mark.mosquitto


def _client(broker, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port, keepalive=30)
    return client


def test_protocol_message_travels_through_a_private_broker(mosquitto) -> None:
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()

    sub = _client(mosquitto, "smoke-sub")
    sub.on_message = lambda _c, _u, msg: received.put(msg)
    sub.on_subscribe = lambda *_a: subscribed.put(True)
    sub.loop_start()
    try:
        sub.subscribe(p.subscription(Kind.TELEMETRY), qos=1)
        assert subscribed.get(timeout=10)

        sample = p.Sample(ts=1.79e9, cpu_pct=3.5, temp_c=48.25, custom={"fan_duty": 0.4})
        sent = p.Telemetry(device_id="pi-42", boot_id="boot-1", seq=7, ts=1.79e9, samples=[sample])
        pub = _client(mosquitto, "pi-42")
        pub.loop_start()
        try:
            info = pub.publish(topic("pi-42", Kind.TELEMETRY), encode(sent), qos=1)
            info.wait_for_publish(timeout=10)
        finally:
            pub.disconnect()
            pub.loop_stop()

        msg = received.get(timeout=10)
        assert decode(msg.topic, msg.payload) == sent
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_broker_can_be_restarted_on_the_same_port(mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.running
    assert mosquitto.port == port
    client = _client(mosquitto, "after-restart")
    client.disconnect()


@pytest.mark.postgres
def test_postgres_fixture_gives_a_fresh_empty_database(postgres_url: str) -> None:
    import psycopg

    libpq = "postgresql://" + postgres_url.split("://", 1)[1]
    with psycopg.connect(libpq) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE probe (id int)")
