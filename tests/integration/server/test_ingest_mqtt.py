"""Ingest through a real Mosquitto: a paho client publishes as a device would.

Covers storage of telemetry, duplicate and malformed handling, presence (clean
disconnect, last will, late last will after a reconnect), and that killing the ingest
process while messages are in flight loses nothing.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import protocol as p
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker, wait_connected
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Device, ReceivedMessage, TelemetrySample
from fleet_server.migrations import upgrade_to_head
from fleet_server.services.ingest import BatchWriter
from tests.conftest import wait_for

pytestmark = pytest.mark.mosquitto
T0 = 1_790_000_000.0


class FakeDevice:
    """A device as the agent behaves on the wire: one seq per device, retained online
    after connect, retained offline last will built just before it."""

    def __init__(self, broker, device_id: str, *, boot_id: str = "boot-1", keepalive: int = 30):
        self.broker = broker
        self.device_id = device_id
        self.boot_id = boot_id
        self.keepalive = keepalive
        self.seq = itertools.count(1)
        self.client: mqtt.Client | None = None

    def presence(self, state: str, seq: int | None = None) -> tuple[int, bytes]:
        seq = next(self.seq) if seq is None else seq
        msg = p.Presence(
            device_id=self.device_id,
            boot_id=self.boot_id,
            seq=seq,
            ts=T0 + seq,
            state=p.PresenceState(state),
            keepalive_s=self.keepalive,
        )
        return seq, p.encode(msg)

    def connect(self, client_id: str | None = None) -> tuple[int, int]:
        """Connect with a last will and publish online; return (will seq, online seq)."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or self.device_id,
            protocol=mqtt.MQTTv5,
        )
        will_seq, will = self.presence("offline")
        client.will_set(p.topic(self.device_id, p.Kind.PRESENCE), will, qos=1, retain=True)
        client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive)
        client.loop_start()
        self.client = client
        online_seq, online = self.presence("online")
        self.publish(p.Kind.PRESENCE, online, retain=True)
        return will_seq, online_seq

    def publish(self, kind: p.Kind, payload: bytes, *, retain: bool = False) -> None:
        assert self.client is not None
        info = self.client.publish(p.topic(self.device_id, kind), payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=10)

    def telemetry(self, seq: int | None = None) -> bytes:
        seq = next(self.seq) if seq is None else seq
        sample = p.Sample(ts=T0 + seq, cpu_pct=5.0, temp_c=45.0)
        msg = p.Telemetry(
            device_id=self.device_id, boot_id=self.boot_id, seq=seq, ts=T0 + seq, samples=[sample]
        )
        return p.encode(msg)

    def disconnect_cleanly(self) -> None:
        """The agent's shutdown: publish offline, then DISCONNECT (no will)."""
        _seq, offline = self.presence("offline")
        self.publish(p.Kind.PRESENCE, offline, retain=True)
        assert self.client is not None
        self.client.disconnect()
        self.client.loop_stop()

    def drop_link(self) -> None:
        """The network dies: the socket closes without DISCONNECT, the broker sends the will."""
        assert self.client is not None
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def ingest(mosquitto, sessions) -> Iterator[IngestWorker]:
    """An in-process ingest worker (MQTT 5 shared subscription) on the private broker."""
    writer = BatchWriter(sessions, auto_register=True)
    worker = IngestWorker(
        writer, IngestOptions(mosquitto.host, mosquitto.port, client_id="ingest-test")
    )
    worker.connect(timeout=10)
    assert wait_connected(worker, 10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield worker
    worker.stop()
    thread.join(timeout=10)


def _count(sessions, model=ReceivedMessage) -> int:
    with sessions() as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def _presence(sessions, device_id: str) -> str | None:
    with sessions() as s:
        return s.execute(
            select(Device.presence).where(Device.device_id == device_id)
        ).scalar_one_or_none()


def test_telemetry_lands_duplicates_dropped_malformed_counted(mosquitto, ingest, sessions):
    dev = FakeDevice(mosquitto, "pi-10")
    dev.connect()
    payloads = [dev.telemetry() for _ in range(20)]
    for payload in payloads:
        dev.publish(p.Kind.TELEMETRY, payload)
    for payload in payloads[:5]:  # the agent re-sends after an outage
        dev.publish(p.Kind.TELEMETRY, payload)
    dev.publish(p.Kind.TELEMETRY, b"\xff\xfe not json")
    dev.publish(p.Kind.TELEMETRY, b'{"v": "9.0", "device_id": "pi-10"}')
    dev.publish(p.Kind.TELEMETRY, dev.telemetry())  # good traffic keeps flowing
    wait_for(lambda: _count(sessions, TelemetrySample) == 21, timeout=20)
    m = ingest.writer.metrics
    wait_for(lambda: m.duplicates._value.get() >= 5, timeout=10)
    assert m.rejected.labels(reason="malformed_json")._value.get() == 1
    assert m.rejected.labels(reason="unsupported_version")._value.get() == 1
    assert _count(sessions, TelemetrySample) == 21
    dev.disconnect_cleanly()


def test_presence_clean_disconnect_and_last_will(mosquitto, ingest, sessions):
    clean = FakeDevice(mosquitto, "pi-11")
    clean.connect()
    wait_for(lambda: _presence(sessions, "pi-11") == "online", timeout=10)
    clean.disconnect_cleanly()
    wait_for(lambda: _presence(sessions, "pi-11") == "offline", timeout=10)

    cut = FakeDevice(mosquitto, "pi-12")
    cut.connect()
    wait_for(lambda: _presence(sessions, "pi-12") == "online", timeout=10)
    cut.drop_link()  # no DISCONNECT: the broker publishes the last will
    wait_for(lambda: _presence(sessions, "pi-12") == "offline", timeout=15)


def test_late_last_will_after_reconnect_keeps_device_online(mosquitto, ingest, sessions):
    dev = FakeDevice(mosquitto, "pi-13")
    dev.connect(client_id="pi-13-link-a")
    first = dev.client
    wait_for(lambda: _presence(sessions, "pi-13") == "online", timeout=10)
    # The device reconnects over a new link before the broker noticed the old one died.
    _will, online_seq = dev.connect(client_id="pi-13-link-b")
    presence_count = ingest.writer.metrics.messages.labels(kind="presence")
    wait_for(lambda: presence_count._value.get() >= 2, timeout=10)
    # Now the old link is found dead and its will (older seq, same boot) arrives late.
    dev.client, current = first, dev.client
    dev.drop_link()
    dev.client = current
    wait_for(lambda: presence_count._value.get() >= 3, timeout=15)
    assert _presence(sessions, "pi-13") == "online"
    with sessions() as s:
        held = s.execute(select(Device.presence_seq).where(Device.device_id == "pi-13"))
        assert held.scalar_one() == online_seq
    dev.disconnect_cleanly()
    wait_for(lambda: _presence(sessions, "pi-13") == "offline", timeout=10)


def _ingest_process(db: str, broker_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "FLEET_DATABASE_URL": db,
        "FLEET_MQTT_URL": broker_url,
        "FLEET_INGEST_AUTO_REGISTER": "true",
        "FLEET_INGEST_BATCH_SIZE": "50",
        "FLEET_INGEST_CLIENT_ID": "ingest-kill-test",
        "FLEET_CONFIG": "",
    }
    env.pop("FLEET_CONFIG")
    exe = Path(sys.executable).parent / "fleet-server"
    return subprocess.Popen(
        [str(exe), "ingest"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


@pytest.mark.slow
def test_killing_ingest_in_flight_loses_nothing(mosquitto, db_url, tmp_path):
    # The harness broker queues by bytes, as production does, while the ingest is down.
    eng = create_db_engine(db_url)
    upgrade_to_head(eng)
    sessions_ = make_session_factory(eng)
    log = tmp_path / "ingest.log"
    proc = _ingest_process(db_url, mosquitto.url, log)
    try:
        dev = FakeDevice(mosquitto, "pi-14")
        dev.connect()
        # The ingest is subscribed once the device's presence has been stored.
        wait_for(lambda: _presence(sessions_, "pi-14") == "online", timeout=30)
        total = 2000
        payloads = [dev.telemetry() for _ in range(total)]
        sender = threading.Thread(
            target=lambda: [dev.publish(p.Kind.TELEMETRY, x) for x in payloads], daemon=True
        )
        sender.start()
        wait_for(lambda: _count(sessions_, TelemetrySample) >= 100, timeout=30)
        proc.send_signal(signal.SIGKILL)  # messages are in flight: some received, not acked
        proc.wait(timeout=10)
        stored_at_kill = _count(sessions_, TelemetrySample)
        sender.join(timeout=60)
        assert stored_at_kill < total, "the kill came too late to test anything"
        proc = _ingest_process(db_url, mosquitto.url, log)
        wait_for(lambda: _count(sessions_, TelemetrySample) == total, timeout=60)
        assert _count(sessions_, TelemetrySample) == total
        dev.disconnect_cleanly()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        eng.dispose()


@pytest.mark.postgres
def test_database_outage_loses_nothing(mosquitto, postgres_url):
    import psycopg

    eng = create_db_engine(postgres_url)
    upgrade_to_head(eng)
    sessions_ = make_session_factory(eng)
    writer = BatchWriter(sessions_, auto_register=True)
    options = IngestOptions(
        mosquitto.host, mosquitto.port, client_id="ingest-outage", retry_backoff_s=0.1
    )
    worker = IngestWorker(writer, options)
    worker.connect(timeout=10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    libpq = "postgresql://" + postgres_url.split("://", 1)[1]
    admin = libpq.rsplit("/", 1)[0] + "/postgres"
    name = libpq.rsplit("/", 1)[1]
    try:
        dev = FakeDevice(mosquitto, "pi-15")
        dev.connect()
        wait_for(lambda: _presence(sessions_, "pi-15") == "online", timeout=20)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        for _ in range(100):  # accepted by the broker while the database is down
            dev.publish(p.Kind.TELEMETRY, dev.telemetry())
        wait_for(lambda: writer.metrics.db_errors._value.get() >= 1, timeout=20)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        wait_for(lambda: _count(sessions_, TelemetrySample) == 100, timeout=60)
        dev.disconnect_cleanly()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        worker.stop()
        thread.join(timeout=20)
        eng.dispose()


def test_silent_network_cut_goes_offline_via_keepalive(mosquitto, ingest, sessions):
    """No FIN, no DISCONNECT: the device just stops talking. The broker's keepalive
    timeout (1.5 x keepalive) publishes the will; the sweep is the backstop."""
    dev = FakeDevice(mosquitto, "pi-16", keepalive=2)
    dev.connect()
    wait_for(lambda: _presence(sessions, "pi-16") == "online", timeout=10)
    assert dev.client is not None
    dev.client.loop_stop()  # socket stays open, but no more PINGREQ
    wait_for(lambda: _presence(sessions, "pi-16") == "offline", timeout=1.5 * 2 + 10)


def test_workers_on_a_shared_subscription_split_the_load_and_store_each_message_once(
    mosquitto, sessions
):
    workers: list[IngestWorker] = []
    threads: list[threading.Thread] = []
    for i in range(2):
        worker = IngestWorker(
            BatchWriter(sessions, auto_register=True),
            IngestOptions(
                mosquitto.host,
                mosquitto.port,
                client_id=f"ingest-shared-{i}",
                shared_group="ingest",
                batch_size=20,
            ),
        )
        worker.connect(timeout=10)
        assert wait_connected(worker, 10)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        workers.append(worker)
        threads.append(thread)
    try:
        devices = [FakeDevice(mosquitto, f"pi-shared-{d}") for d in range(4)]
        for dev in devices:
            dev.connect()
        for _ in range(50):
            for dev in devices:
                dev.publish(p.Kind.TELEMETRY, dev.telemetry())
        wait_for(lambda: _count(sessions, TelemetrySample) == 200, timeout=30)
        handled = [w.writer.metrics.messages.labels(kind="telemetry")._value.get() for w in workers]
        assert all(n > 0 for n in handled), f"both workers took a share: {handled}"
        assert sum(handled) == 200, "each message was handled by exactly one worker"
        for dev in devices:
            dev.disconnect_cleanly()
    finally:
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=10)
