"""Telemetry partitioned by day on PostgreSQL: the migration keeps the data, the jobs
create partitions ahead, retention drops whole partitions and keeps hourly aggregates."""

from __future__ import annotations

import time

from alembic import command
from sqlalchemy import func, insert, select, text

from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Device, TelemetryHourly, TelemetrySample, telemetry_table
from fleet_server.db.partitions import (
    DAY_S,
    WEEK_S,
    ensure_partitions,
    is_partitioned,
    partition_name,
    partitions,
    period_start,
)
from fleet_server.migrations import alembic_config, upgrade_to_head
from fleet_server.services.retention import run_retention

NOW = period_start(time.time(), DAY_S) + 12 * 3600  # noon UTC today
OLD_DAY = partition_name(period_start(NOW - 40 * DAY_S, DAY_S))


def _rows(device_key: int, days: list[int], per_day: int = 3) -> list[dict[str, float]]:
    return [
        {"device_key": device_key, "ts": NOW - d * DAY_S + i * 60.0, "cpu_pct": float(i)}
        for d in days
        for i in range(per_day)
    ]


def test_migration_keeps_data_then_partitions_are_created_ahead_and_dropped(
    postgres_url: str,
) -> None:
    engine = create_db_engine(postgres_url)
    command.upgrade(alembic_config(engine), "0009")
    with engine.begin() as conn:
        key = conn.execute(
            insert(Device)
            .values(device_id="pi-1", status="active", created_at=NOW)
            .returning(Device.id)
        ).scalar_one()
        old = [*_rows(key, [40, 39, 2, 1, 0]), {"device_key": key, "ts": 100.0, "cpu_pct": 1.0}]
        conn.execute(insert(telemetry_table), old)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        assert is_partitioned(s)
        assert s.execute(select(func.count()).select_from(TelemetrySample)).scalar() == len(old)
        # ts=100 (a clock at the epoch) lives in the default partition, not in a 1970 one.
        assert s.execute(text("SELECT count(*) FROM telemetry_default")).scalar() == 1
        names = [p.name for p in partitions(s)]
        assert OLD_DAY in names  # 40 days before NOW, a day with data

    with sessions() as s, s.begin():
        # A sample from 20 days ahead goes to the default; creating its day moves it.
        s.execute(insert(telemetry_table), [{"device_key": key, "ts": NOW + 20 * DAY_S}])
        made = ensure_partitions(s, NOW + 14 * DAY_S, ahead_s=7 * DAY_S)
        assert made
        ahead = s.execute(text("SELECT count(*) FROM telemetry_default")).scalar()
        assert ahead == 1  # only the epoch sample is left there

    with sessions() as s, s.begin():
        result = run_retention(s, now=NOW, raw_days=30)
        left = [p.name for p in partitions(s)]
    assert OLD_DAY not in left
    assert result.samples_deleted == 7  # two days of 3, and the epoch sample
    with sessions() as s:
        hours = s.execute(select(func.sum(TelemetryHourly.samples))).scalar()
        assert hours == 7
        assert (
            s.execute(select(func.count()).select_from(TelemetrySample)).scalar()
            == len(old) - 7 + 1
        )
    command.downgrade(alembic_config(engine), "0009")
    with engine.connect() as conn:
        assert not is_partitioned(conn)
        assert conn.execute(text("SELECT count(*) FROM telemetry")).scalar() == len(old) - 7 + 1
    engine.dispose()


def test_weeks_start_on_monday() -> None:
    monday = period_start(NOW, WEEK_S)
    assert monday <= NOW < monday + WEEK_S
    assert int(monday // DAY_S + 3) % 7 == 0  # 1970-01-01 was a Thursday
