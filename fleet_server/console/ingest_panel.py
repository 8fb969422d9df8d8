"""The overview's ingest health: messages per second, rejections by reason, lag.

Read from this process's ingest metrics (the ones ``/metrics`` exports); a process that
runs no ingest worker says so. The rate is the change of the accepted-messages counter
since the previous reading of this process (the overview polls every few seconds).
"""

from __future__ import annotations

import threading
from typing import Any

from fleet_server.services.metrics import IngestMetrics

_LOCK = threading.Lock()
_LAST: dict[int, tuple[float, float]] = {}


def _total(metrics: IngestMetrics, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels.get(label, "")] = sample.value
    return out


def ingest_health(metrics: IngestMetrics | None, now: float) -> dict[str, Any] | None:
    """Accepted messages by kind, rejections by reason (non-zero), messages per second
    since the last reading and the last batch's lag; None without an ingest."""
    if metrics is None or metrics.status is None:
        return None
    accepted = _total(metrics, "fleet_ingest_messages", "kind")
    rejected = {k: v for k, v in _total(metrics, "fleet_ingest_rejected", "reason").items() if v}
    total = sum(accepted.values())
    with _LOCK:
        before = _LAST.get(id(metrics))
        _LAST[id(metrics)] = (now, total)
    rate = None
    if before is not None and now > before[0]:
        rate = (total - before[1]) / (now - before[0])
    return {
        "accepted": {k: int(v) for k, v in accepted.items()},
        "rejected": {k: int(v) for k, v in rejected.items()},
        "messages_per_s": rate,
        "lag_s": metrics.registry.get_sample_value("fleet_ingest_lag_seconds"),
    }
