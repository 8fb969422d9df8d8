"""The NATS authorisation generated from the fleet CA, enforced by a real nats-server:
mutual TLS on the MQTT and NATS listeners, the certificate subject as the user, and a
device confined to its own subjects."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from agent.credentials import CredentialsBundle
from fleet_server.adapters.nats_conn import NatsOptions, connect, ensure_ingest_consumer
from fleet_server.adapters.nats_publisher import NatsPublisher
from fleet_server.identity import ca_store
from fleet_server.identity.cli import ca_app
from fleet_server.identity.nats_config import (
    NatsNodeSettings,
    identities,
    render_authorization,
    render_nats_conf,
)
from tests.conftest import need_service, wait_for
from tests.support.nats_cluster import NatsNode, nats_binary

NOW = datetime.now(UTC).replace(microsecond=0)
URLS = {"mqtt_url": "mqtts://127.0.0.1:8883", "api_url": "https://127.0.0.1:8443"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsNode, dict]]:
    binary = nats_binary()
    if binary is None:
        need_service("nats-server is not installed (apt-get install nats-server)")
    assert binary is not None
    base = tmp_path_factory.mktemp("natspki")
    ca_store.init_root(base / "root", NOW)
    ca = ca_store.init_issuing(base / "root", base / "issuing", NOW)
    ca.server_certificate(["127.0.0.1", "localhost"], base / "server", NOW)
    bundles: dict[str, CredentialsBundle] = {
        "svc-commands": ca.service_credentials("svc-commands", base / "svc", NOW, **URLS)
    }
    for device in ("dev-a", "dev-b", "dev-r", "dot.ted"):
        bundles[device] = ca.provision(device, base / device, NOW, **URLS)
    ca.revoke(NOW, cn="dev-r", reason="key_compromise")
    ids = identities(ca.records(), NOW)
    assert ids.skipped == ("dot.ted",)
    node = NatsNode(binary, "a1", base / "node")
    node.workdir.mkdir()
    settings = NatsNodeSettings(
        server_name="a1",
        cafile=ca.chain_path,
        certfile=base / "server" / "server.crt",
        keyfile=base / "server" / "server.key",
        store_dir=node.workdir / "store",
        authorization_file=node.workdir / "fleet-auth.conf",
        client_port=node.client_port,
        mqtt_port=node.mqtt_port,
    )
    result = CliRunner().invoke(
        ca_app,
        ["nats-config", "--ca", str(base / "issuing"), "--out", str(settings.authorization_file)],
    )
    assert result.exit_code == 0, result.output
    assert "left out dot.ted" in result.output
    assert settings.authorization_file.read_text() == render_authorization(ids)
    (node.workdir / "nats.conf").write_text(render_nats_conf(settings))
    node.start()
    yield node, bundles
    node.stop()


class Device:
    """A paho MQTT 3.1.1 client over mutual TLS recording what happens to it."""

    def __init__(self, node: NatsNode, bundle: CredentialsBundle) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=bundle.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.tls_set(
            ca_certs=str(bundle.chain_path),
            certfile=str(bundle.cert_path),
            keyfile=str(bundle.key_path),
        )
        self.outcome: str | None = None
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: set[int] = set()
        self.lock = threading.Lock()
        self.client.on_connect = lambda _c, _u, _f, r, _p: setattr(
            self, "outcome", "connected" if not r.is_failure else f"refused: {r}"
        )
        self.client.on_disconnect = lambda _c, _u, _f, r, _p: setattr(
            self, "outcome", self.outcome if self.outcome != "connected" else f"closed: {r}"
        )
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda _c, _u, mid, rs, _p: self.subacks.__setitem__(
            mid, [r.value for r in rs]
        )
        self.client.on_publish = lambda _c, _u, mid, _r, _p: self.pubacks.add(mid)
        try:
            self.client.connect("127.0.0.1", node.mqtt_port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            self.outcome = f"refused: {exc}"
            return
        self.client.loop_start()
        wait_for(lambda: self.outcome is not None, timeout=10)

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks.get(mid), timeout=10)  # type: ignore[return-value]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_devices_are_confined_to_their_own_subjects(fleet) -> None:
    node, bundles = fleet
    a = Device(node, bundles["dev-a"])
    b = Device(node, bundles["dev-b"])
    try:
        assert a.outcome == "connected"
        assert b.outcome == "connected"
        assert a.subscribe("fleet/v1/dev-a/command") == [1]
        assert a.subscribe("fleet/v1/dev-b/command") == [0x80]  # another device's commands
        assert a.subscribe("fleet/v1/+/telemetry") == [0x80]
        assert b.subscribe("fleet/v1/dev-b/command") == [1]
        # The server's delivery subjects are not a way into another session.
        a.subscribe("$MQTT/sub/#")
        a.subscribe("#")
        # The service stores a command for b; only b receives it.
        publisher = NatsPublisher(_service_options(node, bundles["svc-commands"]))
        try:
            publisher.publish("fleet/v1/dev-b/command", b"for-b")
        finally:
            publisher.close()
        wait_for(lambda: b.messages, timeout=10)
        assert b.messages == [("fleet/v1/dev-b/command", b"for-b")]
        assert a.messages == []
    finally:
        a.close()
        b.close()


def test_a_device_cannot_publish_as_another(fleet) -> None:
    node, bundles = fleet
    a = Device(node, bundles["dev-a"])
    b = Device(node, bundles["dev-b"])
    try:
        got: list[str] = []

        async def watch() -> None:
            # The ingest's own path, with a service's permissions: the durable consumer.
            options = _service_options(node, bundles["svc-commands"])
            nc = await connect(options, "probe")
            try:
                js = nc.jetstream()
                await ensure_ingest_consumer(js, options, 1)
                sub = await js.pull_subscribe_bind(options.durable, "$MQTT_msgs")
                a.client.publish("fleet/v1/dev-b/telemetry", b"forged", qos=1)
                a.client.publish("fleet/v1/dev-a/telemetry", b"own", qos=1).wait_for_publish(10)
                for msg in await sub.fetch(10, timeout=2):
                    got.append(f"{msg.subject}={msg.data.decode()}")
                    await msg.ack()
            finally:
                await nc.close()

        asyncio.run(watch())
        assert got == ["$MQTT.msgs.fleet.v1.dev-a.telemetry=own"]
    finally:
        a.close()
        b.close()


def test_revoked_unknown_and_dotted_devices_have_no_user(fleet) -> None:
    node, bundles = fleet
    for name in ("dev-r", "dot.ted"):
        d = Device(node, bundles[name])
        assert d.outcome != "connected", name
        d.close()


def _service_options(node: NatsNode, bundle: CredentialsBundle) -> NatsOptions:
    return NatsOptions(
        servers=[f"tls://127.0.0.1:{node.client_port}"],
        tls_ca=Path(bundle.chain_path),
        tls_cert=Path(bundle.cert_path),
        tls_key=Path(bundle.key_path),
    )
