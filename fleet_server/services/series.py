"""Chart series of one device's health signal over a time range, downsampled in SQL.

The console's charts and ``GET /api/v1/devices/{id}/series`` call :func:`signal_series`,
so a chart shows exactly what the API reports. At most ``max_points`` points come back
whatever the range: raw samples when they fit, otherwise the average per time bucket
computed by the database (``GROUP BY floor(ts / bucket)``); ranges longer than
``RAW_RANGE_S`` read the hourly aggregates that retention keeps (for the signals it
aggregates), so a 90-day chart never scans raw samples.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Integer, cast, func, or_, select
from sqlalchemy.orm import Session

from fleet_server.db.models import TelemetryHourly, TelemetrySample
from fleet_server.errors import InvalidInputError
from fleet_server.services.registry import get_device
from protocol import SIGNALS

MAX_POINTS = 1000
RAW_RANGE_S = 2 * 86400.0
"""Ranges up to this long read raw samples; longer ones hourly aggregates when kept."""
MAX_RANGE_S = 366 * 86400.0
HOURLY: dict[str, str] = {"cpu_pct": "cpu", "mem_pct": "mem", "disk_pct": "disk", "temp_c": "temp"}
"""Signals with hourly min/avg/max columns (``<prefix>_avg``) kept by retention."""
CHARTABLE = tuple(s.name for s in SIGNALS if s.kind is not bool and s.unit != "bits")
"""Signals that make sense as a line (flags and bit fields do not)."""


def _bucket(session: Session, column: Any, width: float) -> Any:
    """``floor(column / width)`` for the session's back-end (both lack a common spelling
    that rounds down: SQLite truncates positive values, PostgreSQL casts by rounding)."""
    if session.get_bind().dialect.name == "sqlite":
        return cast(column / width, Integer)
    return cast(func.floor(column / width), Integer)


def _slots(max_points: int) -> int:
    """Buckets to aim for: aligned buckets over a range may number two more than
    range / width, so aim two short of the cap."""
    return max(1, max_points - 2)


def signal_series(
    session: Session,
    device_id: str,
    signal: str,
    *,
    since: float,
    until: float,
    max_points: int = MAX_POINTS,
) -> dict[str, Any]:
    """The points ``[ts, value]`` of ``signal`` in ``[since, until)``, oldest first, at most
    ``max_points``; ``source`` says ``raw``, ``raw_avg`` (bucketed raw) or ``hourly_avg``,
    and ``bucket_s`` the bucket width (None for raw samples)."""
    many = signals_series(
        session, device_id, [signal], since=since, until=until, max_points=max_points
    )
    return many[signal]


def _check(signals: list[str], since: float, until: float, max_points: int) -> None:
    for signal in signals:
        if signal not in CHARTABLE:
            raise InvalidInputError(
                "validation_error",
                f"signal: not a chartable signal; one of {', '.join(CHARTABLE)}",
            )
    if not 0 < until - since <= MAX_RANGE_S:
        raise InvalidInputError("validation_error", "range: until must be after since, ≤ 366 d")
    if not 1 <= max_points <= MAX_POINTS:
        raise InvalidInputError("validation_error", f"max_points: 1 to {MAX_POINTS}")


def _columns_points(rows: Any, signals: list[str], scale: float) -> dict[str, list[list[float]]]:
    """Per signal, ``[x * scale, value]`` of the rows (first column x) where it has a value."""
    out: dict[str, list[list[float]]] = {s: [] for s in signals}
    for row in rows:
        x = float(row[0]) * scale
        for i, signal in enumerate(signals, start=1):
            if row[i] is not None:
                out[signal].append([x, float(row[i])])
    return out


def signals_series(
    session: Session,
    device_id: str,
    signals: list[str],
    *,
    since: float,
    until: float,
    max_points: int = MAX_POINTS,
) -> dict[str, dict[str, Any]]:
    """:func:`signal_series` of several signals with one query per kind of source (the
    device page draws six charts): each signal gets exactly what it would get alone."""
    _check(signals, since, until, max_points)
    device = get_device(session, device_id)
    base = {"device_id": device.device_id, "since": since, "until": until}
    out: dict[str, dict[str, Any]] = {}
    hourly = [s for s in signals if until - since > RAW_RANGE_S and s in HOURLY]
    raw = [s for s in signals if s not in hourly]
    if hourly:
        h = TelemetryHourly
        width = max(3600.0, math.ceil((until - since) / _slots(max_points) / 3600) * 3600)
        bucket = _bucket(session, h.hour, width)
        averages = [func.avg(getattr(h, f"{HOURLY[s]}_avg")) for s in hourly]
        rows = session.execute(
            select(bucket, *averages)
            .where(h.device_key == device.id, h.hour >= since, h.hour < until)
            .group_by(bucket)
            .order_by(bucket)
        ).all()
        for signal, points in _columns_points(rows, hourly, width).items():
            out[signal] = base | {"signal": signal, "source": "hourly_avg", "bucket_s": width}
            out[signal]["points"] = points
    if raw:
        t = TelemetrySample
        where = (t.device_key == device.id, t.ts >= since, t.ts < until)
        counts = session.execute(
            select(*(func.count(getattr(t, s)) for s in raw)).where(*where)
        ).one()
        small = [s for s, n in zip(raw, counts, strict=True) if n <= max_points]
        big = [s for s in raw if s not in small]
        if small:
            rows = session.execute(
                select(t.ts, *(getattr(t, s) for s in small))
                .where(*where, or_(*(getattr(t, s).is_not(None) for s in small)))
                .order_by(t.ts)
            ).all()
            for signal, points in _columns_points(rows, small, 1.0).items():
                out[signal] = base | {"signal": signal, "source": "raw", "bucket_s": None}
                out[signal]["points"] = points
        if big:
            width = float(math.ceil((until - since) / _slots(max_points)))
            bucket = _bucket(session, t.ts, width)
            rows = session.execute(
                select(bucket, *(func.avg(getattr(t, s)) for s in big))
                .where(*where)
                .group_by(bucket)
                .order_by(bucket)
            ).all()
            for signal, points in _columns_points(rows, big, width).items():
                out[signal] = base | {"signal": signal, "source": "raw_avg", "bucket_s": width}
                out[signal]["points"] = points
    return {signal: out[signal] for signal in signals}
