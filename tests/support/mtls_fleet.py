"""A production-shaped fleet on a real Mosquitto: the fleet CA, the broker configuration
exactly as ``fleet-server ca mosquitto-config`` renders it (mutual TLS, ACLs,
persistence, byte-bounded queues), a database, and the server's own MQTT clients.

:func:`build_mtls_fleet` builds one; the ``mtls_fleet`` fixture of tests/conftest.py is
a factory of them that stops every broker, ingest and engine when the test ends.
Overrides:

* ``devices`` - device ids to provision (certificates in ``<tmp>/<id>``);
* ``device_validity`` - their certificate lifetime;
* ``broker`` - :class:`BrokerSettings` fields (``queue_bytes``, ``sys_interval_s``...);
  ``persistence_dir`` is always the broker's own test directory;
* ``ingest`` - ``[ingest]`` settings (``client_id`` stays ``svc-ingest-1``: its
  certificate's CN);
* ``database_url`` - a database (default: SQLite in the test directory).

Then ``fleet.start_ingest()`` runs an in-process ingest (``build_ingest``, as
``fleet-server run`` does), ``fleet.ingest_env()`` gives the environment for a
``fleet-server ingest`` subprocess, and ``fleet.client(device_id)`` connects a device.
"""

from __future__ import annotations

import getpass
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.adapters.mqtt_ingest import IngestWorker
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.identity import ca_store
from fleet_server.identity.mosquitto_config import BrokerSettings, render_acl, render_mosquitto_conf
from fleet_server.migrations import upgrade_to_head
from fleet_server.runtime import broker_target, build_ingest
from fleet_server.services.audit import SYSTEM
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.registry import create_device
from protocol.credentials import CredentialsBundle
from tests.conftest import MosquittoBroker

NOW = datetime.now(UTC).replace(microsecond=0)
SERVICES = ("svc-ingest-1", "svc-commands")
INGEST_ID = "svc-ingest-1"
URLS = {"mqtt_url": "mqtts://127.0.0.1:8883", "api_url": "https://127.0.0.1:8443"}


@dataclass
class RunningIngest:
    """An in-process ingest worker on its own thread."""

    worker: IngestWorker
    thread: threading.Thread

    def stop(self) -> None:
        """Stop the worker (it flushes) and wait for its thread."""
        self.worker.stop()
        self.thread.join(timeout=15)


@dataclass
class MtlsFleet:
    """A CA, a mutual-TLS Mosquitto from the generated configuration, a database."""

    root: Path
    ca: ca_store.CertificateAuthority
    broker: MosquittoBroker
    broker_settings: BrokerSettings
    engine: Engine
    sessions: sessionmaker[Session]
    db_url: str
    settings: Settings
    devices: dict[str, CredentialsBundle]
    ingest_credentials: CredentialsBundle
    commands_credentials: CredentialsBundle
    _ingests: list[RunningIngest] = field(default_factory=list)
    _clients: list[mqtt.Client] = field(default_factory=list)

    @property
    def mqtt_url(self) -> str:
        """``mqtts://127.0.0.1:<port>`` of the broker."""
        return f"mqtts://{self.broker.host}:{self.broker.port}"

    def start_ingest(self, metrics: IngestMetrics | None = None) -> RunningIngest:
        """Run the ingest as ``fleet-server run`` builds it (service certificate,
        persistent session, renewal), connected before this returns."""
        target = broker_target(self.settings, start_embedded=False)
        worker = build_ingest(self.settings, self.sessions, target, metrics or IngestMetrics())
        worker.connect(timeout=15)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running = RunningIngest(worker, thread)
        self._ingests.append(running)
        return running

    def ingest_env(self) -> dict[str, str]:
        """``FLEET_*`` variables for a ``fleet-server ingest`` (or ``run``) subprocess
        with the same settings, in demo mode (no TUF repository is needed)."""
        s = self.settings
        return {
            "FLEET_SECURITY_MODE": "demo",
            "FLEET_DATABASE_URL": self.db_url,
            "FLEET_MQTT_URL": self.mqtt_url,
            "FLEET_INGEST_CLIENT_ID": s.ingest.client_id,
            "FLEET_INGEST_BATCH_SIZE": str(s.ingest.batch_size),
            "FLEET_INGEST_AUTO_REGISTER": str(s.ingest.auto_register).lower(),
            "FLEET_TLS_MQTT_CA": str(self.ca.chain_path),
            "FLEET_TLS_MQTT_CERT": str(self.ingest_credentials.cert_path),
            "FLEET_TLS_MQTT_KEY": str(self.ingest_credentials.key_path),
            "FLEET_TLS_COMMAND_CERT": str(self.commands_credentials.cert_path),
            "FLEET_TLS_COMMAND_KEY": str(self.commands_credentials.key_path),
        }

    def client(
        self,
        device_id: str,
        *,
        client_id: str | None = None,
        clean_start: bool = True,
        on_publish: Callable[..., None] | None = None,
    ) -> mqtt.Client:
        """An MQTT 5 client on ``device_id``'s certificate, connected, its network loop
        running (paho reconnects by itself); closed when the test ends."""
        bundle = self.devices[device_id]
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or device_id, protocol=mqtt.MQTTv5
        )
        client.tls_set(
            ca_certs=str(bundle.chain_path),
            certfile=str(bundle.cert_path),
            keyfile=str(bundle.key_path),
        )
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        if on_publish is not None:
            client.on_publish = on_publish
        connected = threading.Event()
        client.on_connect = lambda _c, _u, _f, rc, _p: rc == 0 and connected.set()
        client.connect(self.broker.host, self.broker.port, clean_start=clean_start)
        client.loop_start()
        if not connected.wait(15):
            raise TimeoutError(f"{device_id} did not connect: {self.broker.log()[-2000:]}")
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Stop every client and ingest started here, then the database engine."""
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        for ingest in self._ingests:
            ingest.stop()
        self.engine.dispose()


def build_mtls_fleet(
    mosquitto_factory: Callable[..., MosquittoBroker],
    tmp_path: Path,
    *,
    devices: Sequence[str] = ("pi-tls",),
    device_validity: timedelta = timedelta(days=30),
    broker: Mapping[str, Any] | None = None,
    ingest: Mapping[str, Any] | None = None,
    database_url: str | None = None,
) -> MtlsFleet:
    """Issue the certificates, render and start the broker, create the database and
    register ``devices``. See the module docstring for the overrides."""
    ca_store.init_root(tmp_path / "root", NOW)
    ca = ca_store.init_issuing(tmp_path / "root", tmp_path / "issuing", NOW)
    ca.server_certificate(["127.0.0.1", "localhost"], tmp_path / "broker", NOW)
    ingest_creds = ca.service_credentials(INGEST_ID, tmp_path / "ingest", NOW, **URLS)
    commands = ca.service_credentials("svc-commands", tmp_path / "commands", NOW, **URLS)
    bundles = {
        d: ca.provision(d, tmp_path / d, NOW, validity=device_validity, **URLS) for d in devices
    }
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
        persistence_dir="{workdir}",
    )
    conf = replace(conf, **dict(broker or {}), persistence_dir="{workdir}")
    mosquitto = mosquitto_factory(render_mosquitto_conf(conf), name="mtls")
    db = database_url or f"sqlite:///{tmp_path}/fleet.db"
    engine = create_db_engine(db)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        for d in devices:
            create_device(s, {"device_id": d}, actor=SYSTEM, now=NOW.timestamp())
        s.commit()
    settings = Settings.model_validate(
        {
            "database": {"url": db},
            "mqtt": {"url": f"mqtts://127.0.0.1:{mosquitto.port}"},
            "ingest": {"batch_size": 10, **dict(ingest or {}), "client_id": INGEST_ID},
            "security": {"ca_dir": str(tmp_path / "issuing")},
            "tls": {
                "mqtt_ca": str(ca.chain_path),
                "mqtt_cert": str(ingest_creds.cert_path),
                "mqtt_key": str(ingest_creds.key_path),
                "command_cert": str(commands.cert_path),
                "command_key": str(commands.key_path),
            },
        }
    )
    return MtlsFleet(
        tmp_path, ca, mosquitto, conf, engine, sessions, db, settings, bundles, ingest_creds,
        commands,
    )  # fmt: skip
