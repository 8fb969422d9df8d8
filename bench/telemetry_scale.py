"""Telemetry at scale on PostgreSQL: partitioned by day vs the single table.

Two scratch databases with the same schema: one at the partitioned layout (migration
``0013_telemetry_partitions``, a partition per day of data), one at the single table
(revision 0009). Into each, ``--samples`` samples of ``--devices`` devices spread over
``--days`` days, in time order:

* the first and the last ``--probe`` samples go through ``INSERT ... ON CONFLICT DO
  NOTHING`` in batches of 1,000 (the ingest's statement): the insert rate at the start
  and at the end (the partitioned table should stay flat: each day's index is small);
* the rest is loaded with ``COPY`` (only to get there in reasonable time), followed by a
  ``CHECKPOINT`` so that the end probe does not pay for writing the bulk load back;
* then one device's last 24 hours (median of 25 queries over random devices);
* then retention of the oldest day: ``DROP`` of its partition vs ``DELETE`` of its rows.

Usage: ``python bench/telemetry_scale.py [--samples 20000000] [--devices 1000] [--days 30]
[--pg URL]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from alembic import command  # noqa: E402

from bench.ingest import scratch_postgres  # noqa: E402
from fleet_server.db import create_db_engine  # noqa: E402
from fleet_server.db.partitions import DAY_S, create_partition, period_start  # noqa: E402
from fleet_server.migrations import alembic_config  # noqa: E402

COLUMNS = "device_key, ts, cpu_pct, mem_pct, temp_c"


def rows(start: int, stop: int, devices: int, t0: float, step: float) -> Iterator[tuple]:
    """Sample ``i`` is device ``i % devices`` at ``t0 + (i // devices) * step``."""
    for i in range(start, stop):
        yield (i % devices + 1, t0 + (i // devices) * step, 10.0 + i % 50, 40.0, 50.0)


def checkpoint(conn: psycopg.Connection) -> None:
    """Flush dirty pages now (superuser only; skipped otherwise) so that a probe measures
    its own inserts, not the write-back of what was loaded before it."""
    try:
        conn.execute("CHECKPOINT")
        conn.commit()
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()


def insert_rate(conn: psycopg.Connection, data: list[tuple]) -> float:
    sql = f"INSERT INTO telemetry ({COLUMNS}) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
    start = time.perf_counter()
    with conn.cursor() as cur:
        for i in range(0, len(data), 1000):
            cur.executemany(sql, data[i : i + 1000])
            conn.commit()
    return len(data) / (time.perf_counter() - start)


def copy_rows(conn: psycopg.Connection, it: Iterator[tuple], chunk: int = 500_000) -> None:
    with conn.cursor() as cur:
        while True:
            buf = io.StringIO()
            n = 0
            for r in it:
                buf.write("\t".join(str(v) for v in r) + "\n")
                n += 1
                if n >= chunk:
                    break
            if n == 0:
                break
            with cur.copy(f"COPY telemetry ({COLUMNS}) FROM STDIN") as copy:
                copy.write(buf.getvalue())
            conn.commit()


def run_one(url: str, libpq: str, partitioned: bool, args: Any) -> dict[str, float]:
    engine = create_db_engine(url)
    command.upgrade(alembic_config(engine), "head" if partitioned else "0009")
    now = time.time()
    t0 = now - args.days * DAY_S
    per_device = args.samples // args.devices
    step = args.days * DAY_S / per_device
    if partitioned:
        with engine.begin() as conn:
            day = period_start(t0, DAY_S)
            have = {
                r[0]
                for r in conn.exec_driver_sql(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                )
            }
            from fleet_server.db.partitions import partition_name

            while day < now + DAY_S:
                if partition_name(day) not in have:
                    create_partition(conn, day, day + DAY_S)
                day += DAY_S
    engine.dispose()
    total = per_device * args.devices
    with psycopg.connect(libpq) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO devices (device_id, status, channel, tags, created_at, "
                "dropped_total, open_faults, presence) "
                "VALUES (%s, 'active', 'production', '[]', %s, 0, 0, 'unknown')",
                [(f"scale-{i}", now) for i in range(args.devices)],
            )
        conn.commit()
        probe = min(args.probe, total // 4)
        checkpoint(conn)
        first = insert_rate(conn, list(rows(0, probe, args.devices, t0, step)))
        copy_rows(conn, rows(probe, total - probe, args.devices, t0, step))
        conn.execute("ANALYZE telemetry")
        conn.commit()
        # Without this the end probe pays for flushing the bulk load's dirty pages.
        checkpoint(conn)
        last = insert_rate(conn, list(rows(total - probe, total, args.devices, t0, step)))
        checkpoint(conn)
        latencies = []
        end_ts = t0 + (per_device - 1) * step
        for _ in range(25):
            key = random.randint(1, args.devices)
            start = time.perf_counter()
            conn.execute(
                "SELECT ts, cpu_pct FROM telemetry WHERE device_key = %s AND ts >= %s ORDER BY ts",
                (key, end_ts - DAY_S),
            ).fetchall()
            latencies.append((time.perf_counter() - start) * 1000)
        cutoff = period_start(t0, DAY_S) + DAY_S
        start = time.perf_counter()
        if partitioned:
            from fleet_server.db.partitions import partition_name

            conn.execute(f'DROP TABLE "{partition_name(period_start(t0, DAY_S))}"')
        else:
            conn.execute("DELETE FROM telemetry WHERE ts < %s", (cutoff,))
        conn.commit()
        retention_s = time.perf_counter() - start
    return {
        "samples": total,
        "insert_start_rows_per_s": round(first, 1),
        "insert_end_rows_per_s": round(last, 1),
        "last_24h_query_ms_median": round(statistics.median(latencies), 2),
        "retention_one_day_s": round(retention_s, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--probe", type=int, default=100_000)
    ap.add_argument("--pg", default=os.environ.get("FLEET_TEST_DATABASE_URL"))
    args = ap.parse_args()
    if not args.pg:
        sys.exit("PostgreSQL is needed: --pg URL or FLEET_TEST_DATABASE_URL")
    out: dict[str, Any] = {"bench": "telemetry_scale"}
    for label, partitioned in (("partitioned", True), ("single", False)):
        url, drop = scratch_postgres(args.pg)
        libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            started = time.perf_counter()
            out[label] = run_one(url, libpq, partitioned, args)
            print(f"{label}: {out[label]} ({time.perf_counter() - started:.0f}s)", flush=True)
        finally:
            drop()
    p, s = out["partitioned"], out["single"]
    out["insert_end_over_start"] = {
        "partitioned": round(p["insert_end_rows_per_s"] / p["insert_start_rows_per_s"], 3),
        "single": round(s["insert_end_rows_per_s"] / s["insert_start_rows_per_s"], 3),
    }
    out["retention_speedup"] = round(
        s["retention_one_day_s"] / max(p["retention_one_day_s"], 1e-6), 1
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
