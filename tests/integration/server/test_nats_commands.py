"""Commands through NATS into a device's MQTT session (one real nats-server node)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.adapters.nats_conn import NatsOptions
from fleet_server.adapters.nats_publisher import NatsPublisher
from fleet_server.errors import InvalidInputError
from tests.conftest import need_service, wait_for
from tests.support.nats_cluster import NatsCluster, nats_binary


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    binary = nats_binary()
    if binary is None:
        need_service("nats-server is not installed (apt-get install nats-server)")
    assert binary is not None
    c = NatsCluster.create(binary, Path(tmp_path_factory.mktemp("nats1")), size=1)
    c.start()
    yield c
    c.stop()


def _device(port: int, device_id: str, got: list[tuple[str, bytes, int]]) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=device_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), m.qos))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(f"fleet/v1/{device_id}/command", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert subscribed.wait(10)
    return client


def test_a_command_reaches_an_offline_device_when_it_comes_back(node: NatsCluster) -> None:
    port = node.nodes[0].mqtt_port
    got: list[tuple[str, bytes, int]] = []
    device = _device(port, "cmd-1", got)
    device.disconnect()
    device.loop_stop()
    publisher = NatsPublisher(NatsOptions(servers=node.nats_urls))
    try:
        assert publisher.wait_connected(10)
        publisher.publish("fleet/v1/cmd-1/command", b'{"kind":"reboot"}')
        with pytest.raises(InvalidInputError, match="cannot use the \\[nats\\] back-end"):
            publisher.publish("fleet/v1/cmd.2/command", b"{}")
    finally:
        publisher.close()
    device = _device(port, "cmd-1", got)
    try:
        wait_for(lambda: got, timeout=10)
        assert got == [("fleet/v1/cmd-1/command", b'{"kind":"reboot"}', 1)]
    finally:
        device.disconnect()
        device.loop_stop()


def test_publisher_with_no_reachable_server_raises_oserror() -> None:
    from tests.conftest import free_port

    options = NatsOptions(servers=[f"nats://127.0.0.1:{free_port()}"])
    publisher = NatsPublisher(options, connect_timeout_s=0.5)
    try:
        assert not publisher.wait_connected(3)
        with pytest.raises(OSError, match="NATS did not store"):
            publisher.publish("fleet/v1/cmd-1/command", b"{}")
    finally:
        publisher.close()


def test_the_ingest_consumer_takes_new_limits_from_the_configuration(node: NatsCluster) -> None:
    """A consumer keeps what it was created with: without the update a raised
    ``max_ack_pending`` (more workers, or the default raised with ``fetch_batch``) never
    reached a running deployment."""
    import asyncio

    from fleet_server.adapters.nats_conn import MQTT_STREAM, connect, ensure_ingest_consumer

    old = NatsOptions(servers=node.nats_urls, durable="limits", max_ack_pending=20000)
    new = NatsOptions(
        servers=node.nats_urls, durable="limits", max_ack_pending=40000, ack_wait_s=45.0
    )

    async def limits_after(options: NatsOptions) -> tuple[int | None, float | None]:
        nc = await connect(options, "limits-test")
        try:
            js = nc.jetstream()
            await ensure_ingest_consumer(js, options, 1)
            config = (await js.consumer_info(MQTT_STREAM, "limits")).config
            return config.max_ack_pending, config.ack_wait
        finally:
            await nc.close()

    assert asyncio.run(limits_after(old)) == (20000, 30.0)
    assert asyncio.run(limits_after(new)) == (40000, 45.0)
    assert asyncio.run(limits_after(new)) == (40000, 45.0)  # nothing to change: no update
