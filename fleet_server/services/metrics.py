"""Prometheus metrics of one ingest instance (its own registry, no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from protocol import Kind, Reason

EXTRA_REJECT_REASONS = ("unknown_device", "decommissioned", "unstorable")
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
        for kind in (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE):
            self.messages.labels(kind=kind.value)
        for reason in [*(x.value for x in Reason), *EXTRA_REJECT_REASONS]:
            self.rejected.labels(reason=reason)
