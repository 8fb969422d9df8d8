"""Prometheus metrics of one ingest instance (its own registry, no global state)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet_server.services.ingest_health import IngestStatus
from protocol import Kind, Reason

EXTRA_REJECT_REASONS = ("unknown_device", "decommissioned", "unstorable", "rate_limited")
"""Rejection reasons added by the server on top of the protocol's decode reasons."""


class IngestMetrics:
    """Counters and gauges of the ingest path, exposed at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "fleet_ingest_messages", "Accepted and stored device messages", ["kind"], registry=r
        )
        self.rejected = Counter(
            "fleet_ingest_rejected", "Device messages rejected, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "fleet_ingest_duplicates", "Messages dropped as already stored", registry=r
        )
        self.samples = Counter("fleet_ingest_samples", "Telemetry samples stored", registry=r)
        self.samples_skipped = Counter(
            "fleet_ingest_samples_skipped",
            "Telemetry samples not stored: one with the same device and timestamp is "
            "(same_sample: identical; ts_conflict: different values, the first is kept)",
            ["reason"],
            registry=r,
        )
        for reason in ("same_sample", "ts_conflict"):
            self.samples_skipped.labels(reason=reason)
        self.lag = Gauge(
            "fleet_ingest_lag_seconds",
            "Received-to-committed delay of the oldest message of the last batch",
            registry=r,
        )
        self.device_lag = Gauge(
            "fleet_ingest_device_lag_seconds",
            "Commit time minus the device timestamp of the newest message of the last batch",
            registry=r,
        )
        self.batch_size = Histogram(
            "fleet_ingest_batch_size",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.db_errors = Counter(
            "fleet_ingest_db_errors", "Batches that failed to commit and were retried", registry=r
        )
        self.disconnects = Counter(
            "fleet_ingest_disconnects",
            "Unexpected disconnects of the ingest from the broker, by reason",
            ["reason"],
            registry=r,
        )
        self.displaced = Counter(
            "fleet_ingest_displaced",
            "Times another client took the ingest's client id (reason 142, or flapping)",
            registry=r,
        )
        self.session_lost = Counter(
            "fleet_ingest_session_lost",
            "Reconnects that found the persistent session gone (messages queued may be lost)",
            registry=r,
        )
        self.broker_dropped = Gauge(
            "fleet_broker_dropped_messages",
            "Messages the broker dropped since it started ($SYS/broker/publish/messages/dropped)",
            registry=r,
        )
        self.broker_store_bytes = Gauge(
            "fleet_broker_store_bytes",
            "Payload bytes the broker holds ($SYS/broker/store/messages/bytes)",
            registry=r,
        )
        self.broker_clients = Gauge(
            "fleet_broker_clients_connected",
            "Clients connected to the broker ($SYS/broker/clients/connected)",
            registry=r,
        )
        self.broker_heartbeat_age = Gauge(
            "fleet_broker_heartbeat_age_seconds",
            "Seconds since the broker's last $SYS/broker/uptime (-1: none seen)",
            registry=r,
        )
        self.broker_heartbeat_age.set_function(self._heartbeat_age)
        self.status: IngestStatus | None = None
        """Set by the ingest worker of this process; None when there is none (``api``)."""
        for kind in (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE):
            self.messages.labels(kind=kind.value)
        for reason in [*(x.value for x in Reason), *EXTRA_REJECT_REASONS]:
            self.rejected.labels(reason=reason)

    def _heartbeat_age(self) -> float:
        status = self.status
        if status is None or status.broker.heartbeat_at is None:
            return -1.0
        return max(0.0, time.time() - status.broker.heartbeat_at)
