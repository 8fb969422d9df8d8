"""Storage and services on SQLite and PostgreSQL: migrations, ingest writer, alarms,
presence sweep, retention. Time is a hand-driven clock; no broker needed here."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import Connection, func, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError

import protocol as p
from fleet_server.db.engine import create_db_engine, is_sqlite
from fleet_server.db.models import (
    SIGNAL_COLUMN_TYPES,
    Alarm,
    Device,
    ReceivedMessage,
    TelemetryHourly,
    TelemetrySample,
    telemetry_table,
)
from fleet_server.migrations import (
    alembic_config,
    current_revision,
    head_revision,
    upgrade_to_head,
)
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.jobs import run_presence_sweep, run_retention_job
from tests.server_fixtures import FakeClock, settings_for

T0 = 1_790_000_000.0


def telemetry(
    device: str, seq: int, *, boot: str = "boot-1", n: int = 2, ts: float = T0
) -> Inbound:
    samples = [
        p.Sample(ts=ts + seq * 10 + i, cpu_pct=10.0 + i, temp_c=50.0, custom={"fan": 0.5})
        for i in range(n)
    ]
    msg = p.Telemetry(device_id=device, boot_id=boot, seq=seq, ts=ts + seq * 10, samples=samples)
    return Inbound(p.topic(device, p.Kind.TELEMETRY), p.encode(msg), ts)


def event(msg: p.Event) -> Inbound:
    return Inbound(p.topic(msg.device_id, p.Kind.EVENT), p.encode(msg), msg.ts)


def presence(device: str, state: str, seq: int, *, boot: str = "boot-1", ts: float = T0) -> Inbound:
    msg = p.Presence(
        device_id=device, boot_id=boot, seq=seq, ts=ts, state=p.PresenceState(state), keepalive_s=30
    )
    return Inbound(p.topic(device, p.Kind.PRESENCE), p.encode(msg), ts)


def test_migrations_run_from_empty_to_head_and_are_idempotent(engine) -> None:
    assert current_revision(engine) == head_revision()
    upgrade_to_head(engine)  # a second run is a no-op
    tables = set(inspect(engine).get_table_names())
    assert {"devices", "telemetry", "received_messages", "alarms", "audit_log"} <= tables


def test_the_ingest_tables_lose_their_foreign_keys_and_keep_their_rows(db_url: str) -> None:
    """Migration 0014: ``received_messages`` and ``telemetry`` (the two rows the ingest
    writes per message) no longer reference ``devices`` (a per-row check and lock on
    PostgreSQL); their rows, primary keys and SQLite's WITHOUT ROWID layout are kept, and
    a downgrade puts the constraint back."""
    engine = create_db_engine(db_url)
    config = alembic_config(engine)
    command.upgrade(config, "0013_telemetry_partitions")
    with engine.begin() as conn:
        key = conn.execute(
            insert(Device)
            .values(device_id="pi-1", status="active", created_at=T0)
            .returning(Device.id)
        ).scalar_one()
        conn.execute(
            insert(ReceivedMessage),
            [{"device_key": key, "boot_id": "b", "seq": 1, "received_at": T0}],
        )
        conn.execute(insert(telemetry_table), [{"device_key": key, "ts": T0, "cpu_pct": 1.0}])

    def foreign_keys() -> dict[str, int]:
        engine.dispose()  # SQLite: a pooled connection may hold the schema before the change
        seen = inspect(engine)
        return {t: len(seen.get_foreign_keys(t)) for t in ("received_messages", "telemetry")}

    assert foreign_keys() == {"received_messages": 1, "telemetry": 1}
    upgrade_to_head(engine)
    assert foreign_keys() == {"received_messages": 0, "telemetry": 0}
    with engine.connect() as conn:
        for table in ("received_messages", "telemetry"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        if is_sqlite(engine):
            for table in ("received_messages", "telemetry"):
                sql = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}
                ).scalar_one()
                assert "WITHOUT ROWID" in sql, sql
            index = inspect(engine).get_indexes("received_messages")
            assert [i["column_names"] for i in index] == [["received_at"]]
        else:  # PostgreSQL: no partition of telemetry keeps an inherited copy
            assert partition_foreign_keys(conn) == 0
    # The primary key still dedupes.
    with engine.begin() as conn, pytest.raises(IntegrityError):
        conn.execute(
            insert(ReceivedMessage),
            [{"device_key": key, "boot_id": "b", "seq": 1, "received_at": T0}],
        )
    # A row whose device is gone (a device row deleted by hand) does not stop a downgrade:
    # it is what ON DELETE CASCADE would have removed.
    with engine.begin() as conn:
        gone = key + 1000
        conn.execute(
            insert(ReceivedMessage),
            [{"device_key": gone, "boot_id": "b", "seq": 1, "received_at": T0}],
        )
        conn.execute(insert(telemetry_table), [{"device_key": gone, "ts": T0}])
    command.downgrade(config, "0013_telemetry_partitions")
    assert foreign_keys() == {"received_messages": 1, "telemetry": 1}
    with engine.connect() as conn:
        for table in ("received_messages", "telemetry"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        if not is_sqlite(engine):
            assert partition_foreign_keys(conn) > 0
    engine.dispose()


def partition_foreign_keys(conn: Connection) -> int:
    """PostgreSQL: the foreign keys on ``telemetry``'s partitions (inherited copies)."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_constraint c JOIN pg_inherits i "
                "ON i.inhrelid = c.conrelid WHERE c.contype = 'f' "
                "AND i.inhparent = to_regclass('telemetry')"
            )
        ).scalar_one()
    )


def test_migrated_telemetry_table_has_a_column_per_declared_signal(engine) -> None:
    """The migrations and ``protocol.Sample``'s signals agree (a new signal needs both)."""
    reflected = {c["name"]: c for c in inspect(engine).get_columns("telemetry")}
    assert set(reflected) == {"device_key", "ts", "custom", *(s.name for s in p.SIGNALS)}
    for s in p.SIGNALS:
        column = reflected[s.name]
        assert isinstance(column["type"], SIGNAL_COLUMN_TYPES[s.kind]), (s.name, column["type"])
        assert column["nullable"], s.name


def test_writer_stores_dedupes_and_counts_rejections(sessions) -> None:
    writer = BatchWriter(sessions, auto_register=True, clock=FakeClock())
    batch = [
        telemetry("pi-1", 1),
        telemetry("pi-1", 2),
        telemetry("pi-1", 2),  # duplicate inside the batch
        Inbound(p.topic("pi-1", p.Kind.TELEMETRY), b"{not json", T0),
        Inbound("fleet/v1/pi-1/bogus", b"{}", T0),
    ]
    result = writer.write(batch)
    assert result.accepted["telemetry"] == 2
    assert result.duplicates == 1
    assert result.rejected == {"malformed_json": 1, "bad_topic": 1}
    again = writer.write([telemetry("pi-1", 1), telemetry("pi-1", 3)])  # 1 was stored before
    assert again.duplicates == 1
    assert again.accepted["telemetry"] == 1
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(TelemetrySample)).scalar_one() == 6
        device = s.execute(select(Device).where(Device.device_id == "pi-1")).scalar_one()
        assert device.vitals["cpu_pct"] == 11.0
        assert device.last_seen is not None
    m = writer.metrics
    assert m.rejected.labels(reason="malformed_json")._value.get() == 1
    assert m.duplicates._value.get() == 2


def test_unknown_devices_are_rejected_unless_auto_register(sessions) -> None:
    strict = BatchWriter(sessions, auto_register=False)
    assert strict.write([telemetry("ghost", 1)]).rejected == {"unknown_device": 1}
    lenient = BatchWriter(sessions, auto_register=True)
    assert lenient.write([telemetry("ghost", 1)]).accepted["telemetry"] == 1


def test_faults_open_one_alarm_per_code_and_clear_it(sessions) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    env = {"device_id": "pi-2", "boot_id": "b1", "ts": T0}
    writer.write(
        [
            event(p.FaultRaised(**env, seq=1, code="overheat", severity=p.Severity.MINOR)),
            event(p.FaultRaised(**env, seq=2, code="overheat", severity=p.Severity.CRITICAL)),
            event(p.FaultRaised(**env, seq=3, code="undervoltage", severity=p.Severity.MAJOR)),
        ]
    )
    with sessions() as s:
        alarms = s.execute(select(Alarm).order_by(Alarm.code)).scalars().all()
        assert [(a.code, a.state, a.severity, a.occurrences) for a in alarms] == [
            ("overheat", "open", "critical", 2),
            ("undervoltage", "open", "major", 1),
        ]
        assert s.execute(select(Device.open_faults)).scalar_one() == 2
    writer.write([event(p.FaultCleared(**env, seq=4, code="overheat"))])
    writer.write([event(p.FaultRaised(**env, seq=5, code="overheat", severity=p.Severity.MINOR))])
    with sessions() as s:
        states = s.execute(
            select(Alarm.state).where(Alarm.code == "overheat").order_by(Alarm.id)
        ).scalars()
        assert list(states) == ["cleared", "open"]  # history kept, one open
        assert s.execute(select(Device.open_faults)).scalar_one() == 2


def test_late_last_will_does_not_override_newer_online(sessions) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    writer.write([presence("pi-3", "online", 11)])
    writer.write([presence("pi-3", "online", 13)])  # reconnected (will 12 registered)
    writer.write([presence("pi-3", "offline", 10)])  # the first connection's will, late
    with sessions() as s:
        assert s.execute(select(Device.presence)).scalar_one() == "online"
    writer.write([presence("pi-3", "offline", 12)])  # the current connection's will
    with sessions() as s:
        assert s.execute(select(Device.presence)).scalar_one() == "offline"


def test_sweep_marks_silent_devices_offline_and_traffic_brings_them_back(sessions, db_url) -> None:
    clock = FakeClock(T0)
    writer = BatchWriter(sessions, auto_register=True, clock=clock)
    writer.write([presence("pi-4", "online", 1)])  # keepalive 30 s, no interval announced
    settings = settings_for(db_url)
    # 2 x the longer of keepalive 30 s and the default publish interval 60 s (the agent's)
    assert run_presence_sweep(sessions, settings, T0 + 119) == []
    assert run_presence_sweep(sessions, settings, T0 + 121) == ["pi-4"]
    with sessions() as s:
        row = s.execute(select(Device.presence, Device.presence_reason)).one()
        assert tuple(row) == ("offline", "timeout")
    writer.write([telemetry("pi-4", 2, ts=T0 + 60)])
    with sessions() as s:
        assert s.execute(select(Device.presence)).scalar_one() == "online"


def test_the_sweep_waits_for_the_publish_interval_the_device_announced(sessions, db_url) -> None:
    """A device publishing every 300 s is not timed out between two batches."""
    writer = BatchWriter(sessions, auto_register=True, clock=FakeClock(T0))
    msg = p.Presence(
        device_id="pi-5",
        boot_id="b",
        seq=1,
        ts=T0,
        state=p.PresenceState.ONLINE,
        keepalive_s=30,
        interval_s=300.0,
    )
    writer.write([Inbound(p.topic("pi-5", p.Kind.PRESENCE), p.encode(msg), T0)])
    settings = settings_for(db_url)
    assert run_presence_sweep(sessions, settings, T0 + 599) == []
    assert run_presence_sweep(sessions, settings, T0 + 601) == ["pi-5"]


def test_retention_downsamples_to_hourly_and_deletes_raw(sessions, db_url) -> None:
    writer = BatchWriter(sessions, auto_register=True)
    old = T0 - 40 * 86400
    writer.write([telemetry("pi-5", 1, n=3, ts=old), telemetry("pi-5", 2, n=2, ts=T0)])
    settings = settings_for(db_url, retention={"raw_days": 30})
    result = run_retention_job(sessions, settings, T0)
    assert result.samples_deleted == 3
    assert result.hours_written == 1
    with sessions() as s:
        assert s.execute(select(func.count()).select_from(TelemetrySample)).scalar_one() == 2
        hour = s.execute(select(TelemetryHourly)).scalar_one()
        assert hour.samples == 3
        assert (hour.cpu_min, hour.cpu_max) == (10.0, 12.0)
        assert abs(hour.cpu_avg - 11.0) < 1e-9


def test_sqlite_bytes_per_sample_is_small(tmp_path) -> None:
    """Keeps the README figure honest: a sample with a few vitals stays well under 100 B."""
    from fleet_server.db import create_db_engine, make_session_factory

    eng = create_db_engine(f"sqlite:///{tmp_path}/size.db")
    upgrade_to_head(eng)
    writer = BatchWriter(make_session_factory(eng), auto_register=True)
    n_messages, per_message = 200, 10
    for seq in range(n_messages):
        sample_ts = T0 + seq * per_message
        samples = [
            p.Sample(ts=sample_ts + i, cpu_pct=12.5, mem_pct=40.0, temp_c=51.0, disk_pct=33.0)
            for i in range(per_message)
        ]
        msg = p.Telemetry(device_id="pi-6", boot_id="b", seq=seq, ts=sample_ts, samples=samples)
        writer.write([Inbound(p.topic("pi-6", p.Kind.TELEMETRY), p.encode(msg), T0)])
    with eng.connect() as conn:
        pages = conn.execute(
            text("SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%telemetry%'")
        ).scalar()
    if pages is None:  # dbstat not compiled in; nothing to measure
        return
    per_sample = pages / (n_messages * per_message)
    assert per_sample < 100, per_sample
