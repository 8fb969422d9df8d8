"""The server's own MQTT clients through the ACL'd, mutual-TLS Mosquitto, end to end.

The ingest connects with its service certificate (``svc-ingest-1``) and stores what a
device publishes with its own certificate; the command publisher (``svc-commands``)
reaches the device. (Refusals without or with foreign certificates: test_broker_acl.py.)
"""

from __future__ import annotations

import getpass
import threading
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

import protocol as p
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import TelemetrySample
from fleet_server.identity import ca_store
from fleet_server.identity.mosquitto_config import BrokerSettings, render_acl, render_mosquitto_conf
from fleet_server.migrations import upgrade_to_head
from fleet_server.runtime import broker_target, build_ingest, build_publisher
from fleet_server.services.audit import SYSTEM
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.registry import create_device
from tests.conftest import wait_for

pytestmark = pytest.mark.mosquitto

NOW = datetime.now(UTC).replace(microsecond=0)
SERVICES = ["svc-ingest-1", "svc-commands"]


def test_ingest_and_commands_over_mutual_tls(mosquitto_factory, tmp_path: Path) -> None:
    ca_store.init_root(tmp_path / "root", NOW)
    ca = ca_store.init_issuing(tmp_path / "root", tmp_path / "issuing", NOW)
    ca.server_certificate(["127.0.0.1", "localhost"], tmp_path / "broker", NOW)
    urls = {"mqtt_url": "mqtts://127.0.0.1:8883", "api_url": "https://127.0.0.1:8443"}
    ingest = ca.service_credentials("svc-ingest-1", tmp_path / "ingest", NOW, **urls)
    commands = ca.service_credentials("svc-commands", tmp_path / "commands", NOW, **urls)
    device = ca.provision("pi-tls", tmp_path / "pi-tls", NOW, **urls)
    acl = tmp_path / "fleet.acl"
    acl.write_text(render_acl(SERVICES))
    conf = BrokerSettings(
        cafile=ca.chain_path,
        certfile=tmp_path / "broker/server.crt",
        keyfile=tmp_path / "broker/server.key",
        crlfile=ca.crl_path,
        acl_file=acl,
        port="{port}",
        user=getpass.getuser(),
        services=SERVICES,
    )
    broker = mosquitto_factory(render_mosquitto_conf(conf))

    db = f"sqlite:///{tmp_path}/fleet.db"
    engine = create_db_engine(db)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        create_device(s, {"device_id": "pi-tls"}, actor=SYSTEM, now=NOW.timestamp())
        s.commit()
    settings = Settings.model_validate(
        {
            "database": {"url": db},
            "mqtt": {"url": f"mqtts://127.0.0.1:{broker.port}"},
            "ingest": {"client_id": "svc-ingest-1", "batch_size": 10},
            "tls": {
                "mqtt_ca": str(ca.chain_path),
                "mqtt_cert": str(ingest.cert_path),
                "mqtt_key": str(ingest.key_path),
                "command_cert": str(commands.cert_path),
                "command_key": str(commands.key_path),
            },
        }
    )
    target = broker_target(settings, start_embedded=False)
    worker = build_ingest(settings, sessions, target, IngestMetrics())
    worker.connect(timeout=15)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    publisher = build_publisher(settings, target)

    received: list[bytes] = []
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-tls", protocol=mqtt.MQTTv5)
    dev.tls_set(
        ca_certs=str(device.chain_path),
        certfile=str(device.cert_path),
        keyfile=str(device.key_path),
    )
    subscribed = threading.Event()
    dev.on_subscribe = lambda *_a: subscribed.set()
    dev.on_message = lambda _c, _u, m: received.append(m.payload)
    try:
        dev.connect(broker.host, broker.port)
        dev.loop_start()
        dev.subscribe(p.topic("pi-tls", p.Kind.COMMAND), qos=1)
        assert subscribed.wait(10)
        msg = p.Telemetry(
            device_id="pi-tls",
            boot_id="b1",
            seq=1,
            ts=NOW.timestamp(),
            samples=[p.Sample(ts=NOW.timestamp(), cpu_pct=12.5)],
        )
        dev.publish(p.topic("pi-tls", p.Kind.TELEMETRY), p.encode(msg), qos=1)

        def stored() -> bool:
            with sessions() as s:
                return (
                    s.execute(select(func.count()).select_from(TelemetrySample)).scalar_one() == 1
                )

        wait_for(stored, timeout=15)
        # The command publisher authenticates as svc-commands and reaches the device.
        assert publisher.wait_connected(10)
        publisher.publish(p.topic("pi-tls", p.Kind.COMMAND), b'{"probe": 1}')
        wait_for(lambda: received == [b'{"probe": 1}'], timeout=10)
    finally:
        dev.loop_stop()
        dev.disconnect()
        publisher.close()
        worker.stop()
        runner.join(timeout=15)
        engine.dispose()
