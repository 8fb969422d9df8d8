"""The server's own MQTT clients through the ACL'd, mutual-TLS Mosquitto, end to end.

The ingest connects with its service certificate (``svc-ingest-1``) and stores what a
device publishes with its own certificate; the command publisher (``svc-commands``)
reaches the device; a device renews its certificate over its authenticated connection.
(Refusals without or with foreign certificates: test_broker_acl.py.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from agent.credentials import CredentialsBundle, read_bundle
from agent.renewal import CertificateRenewal
from fleet_server.adapters.mqtt_ingest import IngestWorker
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.db.models import AuditEntry, CommandRecord, TelemetrySample
from fleet_server.identity import ca_store
from fleet_server.runtime import broker_target, build_publisher
from fleet_server.services.audit import SYSTEM
from fleet_server.services.registry import create_device
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import CountingCollector, RunningAgent, agent_config
from tests.support.mtls_fleet import NOW, URLS

pytestmark = pytest.mark.mosquitto


@dataclass
class Fleet:
    """A CA, a mutual-TLS Mosquitto, a database, and a running ingest with renewal."""

    ca: ca_store.CertificateAuthority
    broker: MosquittoBroker
    sessions: sessionmaker[Session]
    publisher: PahoPublisher
    device: CredentialsBundle
    worker: IngestWorker


class Device:
    """A device's paho client on its bundle, recording the commands it receives."""

    def __init__(self, broker: MosquittoBroker, bundle: CredentialsBundle) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=bundle.device_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set(
            ca_certs=str(bundle.chain_path),
            certfile=str(bundle.cert_path),
            keyfile=str(bundle.key_path),
        )
        self.received: list[bytes] = []
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.received.append(m.payload)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(p.topic(bundle.device_id, p.Kind.COMMAND), qos=1)
        assert subscribed.wait(10)

    def publish(self, message: Any, kind: p.Kind) -> None:
        self.client.publish(p.topic(message.device_id, kind), p.encode(message), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def fleet(mtls_fleet) -> Iterator[Fleet]:
    # Valid for 3 hours: due for renewal after 2.
    base = mtls_fleet(devices=["pi-tls"], device_validity=timedelta(hours=3))
    running = base.start_ingest()
    publisher = build_publisher(base.settings, broker_target(base.settings, start_embedded=False))
    try:
        yield Fleet(
            base.ca, base.broker, base.sessions, publisher, base.devices["pi-tls"], running.worker
        )
    finally:
        publisher.close()


def test_ingest_and_commands_over_mutual_tls(fleet: Fleet) -> None:
    dev = Device(fleet.broker, fleet.device)
    try:
        ts = NOW.timestamp()
        dev.publish(
            p.Telemetry(
                device_id="pi-tls",
                boot_id="b1",
                seq=1,
                ts=ts,
                samples=[p.Sample(ts=ts, cpu_pct=12.5)],
            ),
            p.Kind.TELEMETRY,
        )

        def stored() -> bool:
            with fleet.sessions() as s:
                count = s.execute(select(func.count()).select_from(TelemetrySample)).scalar_one()
                return bool(count == 1)

        wait_for(stored, timeout=15)
        # The command publisher authenticates as svc-commands and reaches the device.
        assert fleet.publisher.wait_connected(10)
        fleet.publisher.publish(p.topic("pi-tls", p.Kind.COMMAND), b'{"probe": 1}')
        wait_for(lambda: dev.received == [b'{"probe": 1}'], timeout=10)
    finally:
        dev.close()


def test_device_renews_its_certificate_over_its_connection(fleet: Fleet) -> None:
    renewal = CertificateRenewal(fleet.device.directory)
    assert not renewal.due(NOW + timedelta(hours=1))
    assert renewal.due(NOW + timedelta(hours=2, minutes=30))
    old_serial = fleet.device.certificate.serial_number
    dev = Device(fleet.broker, fleet.device)
    try:
        dev.publish(renewal.request(boot_id="b1", seq=7, now=NOW.timestamp()), p.Kind.EVENT)
        wait_for(lambda: len(dev.received) == 1, timeout=15)
        command = p.decode(p.topic("pi-tls", p.Kind.COMMAND), dev.received[0])
        assert isinstance(command, p.InstallCertificate)
        renewed = renewal.install(command)
    finally:
        dev.close()
    assert renewed.certificate.serial_number != old_serial
    assert renewed.not_after > fleet.device.not_after
    assert not renewal.pending_key_path.exists()
    # The renewed credentials work on the broker.
    again = Device(fleet.broker, renewed)
    again.close()
    with fleet.sessions() as s:
        (cmd,) = s.execute(select(CommandRecord)).scalars()
        assert cmd.kind == "install_certificate"
        actions = s.execute(select(AuditEntry.action)).scalars().all()
    assert "device.renew" in actions


def test_a_renewal_for_a_revoked_device_is_refused(fleet: Fleet) -> None:
    renewal = CertificateRenewal(fleet.device.directory)
    dev = Device(fleet.broker, fleet.device)
    try:
        # Revoked at the CA while the broker still holds the session (before a reload).
        fleet.ca.revoke(NOW, cn="pi-tls", reason="key_compromise")
        dev.publish(renewal.request(boot_id="b1", seq=8, now=NOW.timestamp()), p.Kind.EVENT)
        renewer = fleet.worker.renewer
        assert renewer is not None
        wait_for(lambda: renewer.refused == 1, timeout=15)
        assert renewer.issued == 0
        assert _event_stored(fleet, "certificate_request")  # kept as a device event
        with fleet.sessions() as s:
            assert s.execute(select(func.count()).select_from(CommandRecord)).scalar_one() == 0
        # A probe on the same path: the device got nothing before it.
        assert fleet.publisher.wait_connected(10)
        fleet.publisher.publish(p.topic("pi-tls", p.Kind.COMMAND), b'{"probe": 2}')
        wait_for(lambda: b'{"probe": 2}' in dev.received, timeout=10)
        assert dev.received == [b'{"probe": 2}']
    finally:
        dev.close()


def _event_stored(fleet: Fleet, kind: str) -> bool:
    from fleet_server.db.models import DeviceEvent

    with fleet.sessions() as s:
        n = s.execute(
            select(func.count()).select_from(DeviceEvent).where(DeviceEvent.kind == kind)
        ).scalar_one()
    return bool(n >= 1)


def test_the_agent_daemon_renews_by_itself_and_reconnects(fleet: Fleet, tmp_path: Path) -> None:
    # Issued 20 hours ago for a day: past two thirds of its lifetime, still valid.
    directory = tmp_path / "pi-agent-credentials"
    old = fleet.ca.provision(
        "pi-agent", directory, NOW - timedelta(hours=20), validity=timedelta(days=1), **URLS
    )
    with fleet.sessions() as s:
        create_device(s, {"device_id": "pi-agent"}, actor=SYSTEM, now=NOW.timestamp())
        s.commit()
    config = agent_config(
        f"mqtts://{fleet.broker.host}:{fleet.broker.port}",
        tmp_path / "state",
        device_id="pi-agent",
        tls={"bundle": str(directory)},
    )
    agent = RunningAgent(config, CountingCollector())
    try:

        def completed() -> bool:
            with fleet.sessions() as s:
                rows = s.execute(
                    select(CommandRecord.status).where(CommandRecord.kind == "install_certificate")
                ).all()
            return [r.status for r in rows] == ["completed"]

        # The ack of the install travels on the connection made with the new bundle.
        wait_for(completed, timeout=30)
    finally:
        agent.stop()
    renewed = read_bundle(directory)
    assert renewed.certificate.serial_number != old.certificate.serial_number
    assert renewed.not_after > old.not_after
    assert not CertificateRenewal(directory).due(datetime.now(UTC))
