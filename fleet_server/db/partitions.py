"""Telemetry partitioned by time on PostgreSQL (declarative range partitioning on ``ts``).

Why: one ever-growing table trimmed by row deletes costs more to insert into as it grows
and makes retention a large ``DELETE``. Partitioned by day (or week), inserts touch only
the current partition's index, a device's recent samples are found by partition pruning,
and retention drops whole partitions.

Layout: ``telemetry`` is the partitioned parent; ``telemetry_pYYYYMMDD`` holds
``[start, start + period)`` (UTC; weeks start on Monday); ``telemetry_default`` catches
what no partition covers (a device clock far off, or a period not created yet) so a row is
never refused. Creating a partition whose range already has rows in the default moves
them into it first (the server never loses a sample to a missing partition).

SQLite keeps the single table: every function here is a no-op there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

DAY_S = 86400
WEEK_S = 7 * DAY_S
MONDAY_S = 4 * DAY_S
"""1970-01-05, the first Monday after the epoch: weeks are aligned to it."""
DEFAULT = "telemetry_default"
_BOUND = re.compile(r"FROM \('?([-0-9.e+]+)'?\) TO \('?([-0-9.e+]+)'?\)")


@dataclass(frozen=True, order=True)
class Partition:
    """One time partition: ``[lo, hi)`` in unix seconds."""

    lo: float
    hi: float
    name: str


def _conn(bind: Session | Connection) -> Connection:
    return bind.connection() if isinstance(bind, Session) else bind


def is_partitioned(bind: Session | Connection) -> bool:
    """True when ``telemetry`` is a partitioned table (PostgreSQL after the migration)."""
    conn = _conn(bind)
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass('telemetry')")
    ).scalar()
    return kind == "p"


def period_start(ts: float, period_s: int) -> float:
    """Start of the period containing ``ts`` (UTC midnight; Monday for weeks)."""
    offset = MONDAY_S if period_s == WEEK_S else 0
    return float(((int(ts) - offset) // period_s) * period_s + offset)


def partition_name(lo: float) -> str:
    """``telemetry_pYYYYMMDD`` of the partition starting at ``lo``."""
    return "telemetry_p" + datetime.fromtimestamp(lo, UTC).strftime("%Y%m%d")


def partitions(bind: Session | Connection) -> list[Partition]:
    """The time partitions (not the default), oldest first."""
    rows = (
        _conn(bind)
        .execute(
            text(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = to_regclass('telemetry')"
            )
        )
        .all()
    )
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:
            out.append(Partition(float(m.group(1)), float(m.group(2)), name))
    return sorted(out)


def create_partition(bind: Session | Connection, lo: float, hi: float) -> str:
    """Create ``[lo, hi)``, moving any rows the default partition holds for it."""
    conn = _conn(bind)
    name = partition_name(lo)
    conn.execute(text(f'CREATE TABLE "{name}" (LIKE telemetry INCLUDING DEFAULTS)'))
    conn.execute(
        text(
            f'WITH moved AS (DELETE FROM "{DEFAULT}" WHERE ts >= :lo AND ts < :hi RETURNING *) '
            f'INSERT INTO "{name}" SELECT * FROM moved'
        ),
        {"lo": lo, "hi": hi},
    )
    conn.execute(
        text(
            f'ALTER TABLE telemetry ATTACH PARTITION "{name}" FOR VALUES FROM ({lo!r}) TO ({hi!r})'
        )
    )
    return name


def ensure_partitions(
    bind: Session | Connection, now: float, *, period_s: int = DAY_S, ahead_s: float = 7 * DAY_S
) -> list[str]:
    """Create the partitions from the current period up to ``now + ahead_s`` (after the
    newest existing one); the names created. A no-op when not partitioned."""
    if not is_partitioned(bind):
        return []
    existing = partitions(bind)
    start = period_start(now, period_s)
    if existing:
        start = max(start, existing[-1].hi)
    created = []
    while start < now + ahead_s:
        hi = period_start(start, period_s) + period_s
        created.append(create_partition(bind, start, hi))
        start = hi
    return created


def drop_partitions_before(bind: Session | Connection, cutoff: float) -> tuple[list[str], int]:
    """Drop every partition wholly before ``cutoff``; (names, rows they held)."""
    conn = _conn(bind)
    names, rows = [], 0
    for part in partitions(conn):
        if part.hi > cutoff:
            break
        rows += int(conn.execute(text(f'SELECT count(*) FROM "{part.name}"')).scalar_one())
        conn.execute(text(f'DROP TABLE "{part.name}"'))
        names.append(part.name)
    return names, rows


def retention_boundary(bind: Session | Connection, cutoff: float) -> float:
    """The newest partition boundary at or before ``cutoff`` (raw data is kept up to one
    period longer, so that retention only drops whole partitions); ``cutoff`` itself when
    no partition ends before it."""
    ends = [p.hi for p in partitions(bind) if p.hi <= cutoff]
    return max(ends) if ends else min([cutoff, *(p.lo for p in partitions(bind))])


def convert_to_partitioned(
    conn: Connection, now: float, *, period_s: int = DAY_S, ahead_s: float = 7 * DAY_S
) -> int:
    """Turn the plain ``telemetry`` into the partitioned layout, keeping every row: a
    partition per period that has data (within two years of ``now``), the periods ahead,
    the default for the rest. Returns the rows moved."""
    conn.execute(text("ALTER TABLE telemetry RENAME TO telemetry_unpartitioned"))
    conn.execute(
        text("ALTER TABLE telemetry_unpartitioned RENAME CONSTRAINT pk_telemetry TO pk_telemetry_u")
    )
    conn.execute(
        text(
            "CREATE TABLE telemetry (LIKE telemetry_unpartitioned INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (ts)"
        )
    )
    conn.execute(
        text("ALTER TABLE telemetry ADD CONSTRAINT pk_telemetry PRIMARY KEY (device_key, ts)")
    )
    conn.execute(
        text(
            "ALTER TABLE telemetry ADD CONSTRAINT fk_telemetry_device_key_devices "
            "FOREIGN KEY (device_key) REFERENCES devices (id) ON DELETE CASCADE"
        )
    )
    conn.execute(text(f'CREATE TABLE "{DEFAULT}" PARTITION OF telemetry DEFAULT'))
    offset = MONDAY_S if period_s == WEEK_S else 0
    starts = conn.execute(
        text(
            "SELECT DISTINCT floor((ts - :off) / :p) * :p + :off FROM telemetry_unpartitioned "
            "WHERE ts >= :lo AND ts < :hi"
        ),
        {"off": offset, "p": period_s, "lo": now - 730 * DAY_S, "hi": now + ahead_s},
    ).scalars()
    for lo in sorted(float(s) for s in starts):
        create_partition(conn, lo, lo + period_s)
    ensure_partitions(conn, now, period_s=period_s, ahead_s=ahead_s)
    moved = conn.execute(
        text("INSERT INTO telemetry SELECT * FROM telemetry_unpartitioned")
    ).rowcount
    conn.execute(text("DROP TABLE telemetry_unpartitioned"))
    return int(moved or 0)


def convert_to_plain(conn: Connection) -> None:
    """Undo :func:`convert_to_partitioned`, keeping every row."""
    conn.execute(text("ALTER TABLE telemetry RENAME TO telemetry_partitioned"))
    conn.execute(
        text("ALTER TABLE telemetry_partitioned RENAME CONSTRAINT pk_telemetry TO pk_telemetry_p")
    )
    conn.execute(text("CREATE TABLE telemetry (LIKE telemetry_partitioned INCLUDING DEFAULTS)"))
    conn.execute(
        text("ALTER TABLE telemetry ADD CONSTRAINT pk_telemetry PRIMARY KEY (device_key, ts)")
    )
    conn.execute(
        text(
            "ALTER TABLE telemetry ADD CONSTRAINT fk_telemetry_device_key_devices "
            "FOREIGN KEY (device_key) REFERENCES devices (id) ON DELETE CASCADE"
        )
    )
    conn.execute(text("INSERT INTO telemetry SELECT * FROM telemetry_partitioned"))
    conn.execute(text("DROP TABLE telemetry_partitioned CASCADE"))
