"""Wiring of the server's parts for ``fleet-server run|ingest|api|jobs``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.adapters.embedded_broker import EmbeddedBroker
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.adapters.mqtt_url import ClientTls, is_tls_url, parse_mqtt_url
from fleet_server.adapters.nats_conn import NatsOptions
from fleet_server.adapters.nats_ingest import NatsIngestWorker
from fleet_server.adapters.nats_publisher import NatsPublisher
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.identity.ca_store import CertificateAuthority
from fleet_server.migrations import upgrade_to_head
from fleet_server.services.clock import system_clock
from fleet_server.services.ingest import BatchWriter
from fleet_server.services.ingest_budget import BudgetPolicy
from fleet_server.services.ingest_health import ReadinessPolicy
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.renewal import CertificateRenewer

log = logging.getLogger(__name__)


@dataclass
class BrokerTarget:
    """Where the MQTT clients connect, and whether it speaks MQTT 5."""

    host: str
    port: int
    mqtt5: bool
    embedded: EmbeddedBroker | None = field(default=None)
    tls: ClientTls | None = None
    nats: NatsOptions | None = None
    """Set when the back-end is a NATS cluster (``[nats] servers``)."""


def open_database(
    settings: Settings, *, migrate: bool = True
) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and sessions for the configured database, migrated to head."""
    engine = create_db_engine(settings.database.url, pool_size=settings.database.pool_size)
    if migrate:
        upgrade_to_head(engine)
    return engine, make_session_factory(engine)


def broker_target(settings: Settings, *, start_embedded: bool) -> BrokerTarget:
    """The configured broker, or the embedded one on loopback (started if asked)."""
    if settings.nats.enabled:
        n = settings.nats
        options = NatsOptions(
            servers=list(n.servers),
            credentials=n.credentials,
            user=n.user,
            password=n.password,
            tls_ca=n.tls_ca,
            tls_cert=n.tls_cert,
            tls_key=n.tls_key,
            durable=n.durable,
            replicas=n.replicas,
            fetch_batch=n.fetch_batch,
            ack_wait_s=n.ack_wait_s,
            max_ack_pending=n.max_ack_pending,
        )
        return BrokerTarget("", 0, mqtt5=False, nats=options)
    if settings.mqtt.url:
        host, port = parse_mqtt_url(settings.mqtt.url)
        return BrokerTarget(host, port, mqtt5=True, tls=client_tls(settings))
    port = settings.mqtt.embedded_port
    if not start_embedded:
        return BrokerTarget("127.0.0.1", port, mqtt5=False)
    broker = EmbeddedBroker(port)
    broker.start()
    log.info("embedded MQTT broker (MQTT 3.1.1) listening on 127.0.0.1:%d", port)
    return BrokerTarget("127.0.0.1", port, mqtt5=False, embedded=broker)


def client_tls(settings: Settings) -> ClientTls | None:
    """Mutual TLS for the server's MQTT clients when the URL is ``mqtts://``: verify the
    broker with ``tls.mqtt_ca`` and present the service certificate ``tls.mqtt_cert``."""
    if not is_tls_url(settings.mqtt.url):
        return None
    t = settings.tls
    if t.mqtt_ca is None:
        raise ValueError("tls.mqtt_ca must be set for an mqtts:// broker")
    return ClientTls(t.mqtt_ca, t.mqtt_cert, t.mqtt_key)


def build_ingest(
    settings: Settings,
    sessions: sessionmaker[Session],
    target: BrokerTarget,
    metrics: IngestMetrics,
) -> IngestWorker | NatsIngestWorker:
    """An ingest worker for the target broker (MQTT 3.1.1, unshared, on the embedded one;
    a pull consumer on a NATS cluster)."""
    i = settings.ingest
    writer = BatchWriter(
        sessions,
        metrics=metrics,
        auto_register=i.auto_register,
        max_clock_skew_s=settings.presence.max_clock_skew_s,
        activate_on_first_contact=settings.registry.activate_on_first_contact,
    )
    budget = BudgetPolicy(
        messages_per_s=i.device_messages_per_s,
        message_burst=i.device_message_burst,
        bytes_per_s=i.device_bytes_per_s,
        byte_burst=i.device_byte_burst,
    )
    if target.nats is not None:
        return NatsIngestWorker(
            writer, target.nats, renewer=_renewer(settings, sessions), budget=budget
        )
    options = IngestOptions(
        host=target.host,
        port=target.port,
        client_id=i.client_id,
        mqtt5=target.mqtt5,
        shared_group=i.shared_group if target.mqtt5 else None,
        session_expiry_s=i.session_expiry_s,
        receive_maximum=i.receive_maximum,
        keepalive_s=settings.mqtt.keepalive_s,
        batch_size=i.batch_size,
        tls=target.tls,
        budget=budget,
        readiness=ReadinessPolicy(sys_interval_s=i.broker_sys_interval_s, stable_s=i.stable_s),
    )
    return IngestWorker(writer, options, renewer=_renewer(settings, sessions))


def _renewer(settings: Settings, sessions: sessionmaker[Session]) -> CertificateRenewer | None:
    """Certificate renewal over MQTT, when this server runs the CA (``security.ca_dir``)."""
    if settings.security.ca_dir is None:
        return None
    ca_dir = settings.security.ca_dir
    return CertificateRenewer(
        sessions, lambda: CertificateAuthority.load(ca_dir), clock=system_clock
    )


def build_publisher(settings: Settings, target: BrokerTarget) -> PahoPublisher | NatsPublisher:
    """The command publisher connected to the target broker."""
    if target.nats is not None:
        return NatsPublisher(target.nats)
    tls = target.tls
    t = settings.tls
    if tls is not None and t.command_cert is not None:
        tls = ClientTls(tls.ca, t.command_cert, t.command_key)
    return PahoPublisher(target.host, target.port, mqtt5=target.mqtt5, tls=tls)
