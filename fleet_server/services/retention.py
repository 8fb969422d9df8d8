"""Telemetry retention: raw samples older than N days become hourly aggregates."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, cast, delete, func, select
from sqlalchemy.orm import Session

from fleet_server.db.models import ReceivedMessage, TelemetryHourly, TelemetrySample
from fleet_server.db.partitions import drop_partitions_before, is_partitioned, retention_boundary

_AGG = {"cpu": "cpu_pct", "mem": "mem_pct", "disk": "disk_pct", "temp": "temp_c"}


@dataclass(frozen=True)
class RetentionResult:
    """What one retention pass did."""

    cutoff: float
    hours_written: int
    samples_deleted: int
    dedupe_keys_deleted: int

    def __bool__(self) -> bool:
        """True when the pass changed anything (worth a log line)."""
        return bool(self.hours_written or self.samples_deleted or self.dedupe_keys_deleted)


def run_retention(session: Session, *, now: float, raw_days: float) -> RetentionResult:
    """Downsample raw telemetry older than ``raw_days`` to hourly min/avg/max, merge into
    existing hourly rows, then delete the raw samples and their dedupe keys.

    The cutoff is aligned down to the hour so an hour is aggregated once, complete.
    Dedupe keys older than the cutoff go too: the agent's buffer is bounded in age,
    so a message that old is not re-sent.

    On partitioned PostgreSQL the cutoff moves back to the last partition boundary and
    the raw samples go by dropping whole partitions (what is left before the cutoff is
    only in the default partition: a device clock far off).
    """
    cutoff = float(int((now - raw_days * 86400) // 3600) * 3600)
    partitioned = is_partitioned(session)
    if partitioned:
        cutoff = retention_boundary(session, cutoff)
    t = TelemetrySample
    if session.get_bind().dialect.name == "sqlite":
        hour = cast(t.ts / 3600, Integer) * 3600
    else:
        hour = cast(func.floor(t.ts / 3600), Integer) * 3600
    cols = [t.device_key, hour.label("hour"), func.count().label("n")]
    for short, col in _AGG.items():
        c = getattr(t, col)
        cols += [
            func.min(c).label(f"{short}_min"),
            func.avg(c).label(f"{short}_avg"),
            func.max(c).label(f"{short}_max"),
            func.count(c).label(f"{short}_n"),
        ]
    groups = session.execute(select(*cols).where(t.ts < cutoff).group_by(t.device_key, hour)).all()
    for g in groups:
        existing = session.get(TelemetryHourly, (g.device_key, int(g.hour)))
        if existing is None:
            existing = TelemetryHourly(device_key=g.device_key, hour=int(g.hour), samples=0)
            session.add(existing)
        old_n = existing.samples
        for short in _AGG:
            lo, avg, hi = (getattr(g, f"{short}_{x}") for x in ("min", "avg", "max"))
            if avg is None:
                continue
            cur_avg = getattr(existing, f"{short}_avg")
            n_new = getattr(g, f"{short}_n")
            if cur_avg is None:
                merged_avg = float(avg)
            else:
                merged_avg = (cur_avg * old_n + float(avg) * n_new) / (old_n + n_new)
            cur_lo = getattr(existing, f"{short}_min")
            cur_hi = getattr(existing, f"{short}_max")
            setattr(existing, f"{short}_min", lo if cur_lo is None else min(cur_lo, lo))
            setattr(existing, f"{short}_max", hi if cur_hi is None else max(cur_hi, hi))
            setattr(existing, f"{short}_avg", merged_avg)
        existing.samples = old_n + int(g.n)
    dropped = drop_partitions_before(session, cutoff)[1] if partitioned else 0
    deleted = dropped + (session.execute(delete(t).where(t.ts < cutoff)).rowcount or 0)
    keys = session.execute(
        delete(ReceivedMessage).where(ReceivedMessage.received_at < cutoff)
    ).rowcount
    return RetentionResult(cutoff, len(groups), int(deleted or 0), int(keys or 0))
