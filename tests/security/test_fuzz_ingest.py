"""Hostile input against the real ingest path (protocol decode + BatchWriter on SQLite).

Arbitrary bytes on arbitrary topics, and valid messages with mutated fields, must never
raise out of the writer; every message is accounted for (accepted, duplicate or rejected
with a reason, and the rejection counters grow by exactly that); and what was stored
before stays exactly as it was. Replays and topic/payload mismatches are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Device, DeviceEvent, TelemetrySample
from fleet_server.migrations import upgrade_to_head
from fleet_server.services.audit import SYSTEM
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.metrics import EXTRA_REJECT_REASONS
from fleet_server.services.registry import create_device
from tests.server_fixtures import FakeClock

T0 = 1_790_000_000.0
DEVICES = ("dev-1", "dev-2")
REASONS = {r.value for r in p.Reason} | set(EXTRA_REJECT_REASONS)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _telemetry(device: str, seq: int, boot: str = "boot-1", cpu: float = 10.0) -> Inbound:
    msg = p.Telemetry(
        device_id=device,
        boot_id=boot,
        seq=seq,
        ts=T0 + seq,
        samples=[p.Sample(ts=T0 + seq, cpu_pct=cpu, temp_c=40.0, custom={"fan": 0.5})],
    )
    return Inbound(p.topic(device, p.Kind.TELEMETRY), p.encode(msg), T0)


def _fault(device: str, seq: int) -> Inbound:
    msg = p.FaultRaised(
        device_id=device,
        boot_id="boot-1",
        seq=seq,
        ts=T0 + seq,
        code="overheat",
        severity=p.Severity.WARNING,
        message="hot",
    )
    return Inbound(p.topic(device, p.Kind.EVENT), p.encode(msg), T0)


def _presence(device: str, seq: int) -> Inbound:
    msg = p.Presence(
        device_id=device,
        boot_id="boot-1",
        seq=seq,
        ts=T0 + seq,
        state=p.PresenceState.ONLINE,
        keepalive_s=30,
    )
    return Inbound(p.topic(device, p.Kind.PRESENCE), p.encode(msg), T0)


BASELINE = [
    _telemetry("dev-1", 1),
    _telemetry("dev-1", 2),
    _fault("dev-1", 3),
    _presence("dev-1", 4),
]


class Fleet:
    """A migrated SQLite database with two registered devices and a stored baseline."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.writer = BatchWriter(sessions, clock=FakeClock(T0))
        result = self.writer.write(BASELINE)
        assert result.rejected == {}
        assert sum(result.accepted.values()) == len(BASELINE)
        self.baseline = self.stored()

    def stored(self) -> dict[str, set[str]]:
        """Every telemetry sample and event row, as comparable strings."""
        with self.sessions() as s:
            samples = s.execute(select(TelemetrySample.__table__)).all()
            events = s.execute(select(DeviceEvent.__table__)).all()
        return {"telemetry": {repr(r) for r in samples}, "events": {repr(r) for r in events}}

    def rejected_total(self) -> float:
        """Sum of the rejection counters over every reason."""
        return sum(self.writer.metrics.rejected.labels(reason=r)._value.get() for r in REASONS)

    def feed(self, batch: list[Inbound]) -> Any:
        """Write ``batch`` and check the invariants every hostile batch must keep."""
        before = self.rejected_total()
        result = self.writer.write(batch)  # must not raise
        assert result.total == len(batch), "every message is accounted for"
        assert set(result.rejected) <= REASONS
        assert self.rejected_total() - before == sum(result.rejected.values())
        now = self.stored()
        for table, rows in self.baseline.items():
            assert rows <= now[table], f"previously stored {table} rows changed"
        return result


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    db: Path = tmp_path_factory.mktemp("fuzz") / "fleet.db"
    engine = create_db_engine(f"sqlite:///{db}")
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        for device in DEVICES:
            create_device(s, {"device_id": device, "serial": f"SN-{device}"}, actor=SYSTEM, now=T0)
        s.commit()
    yield Fleet(sessions)
    engine.dispose()


# -- strategies ------------------------------------------------------------------------

_kinds = st.sampled_from([k.value for k in p.Kind] + ["bogus", ""])
_ids = st.sampled_from([*DEVICES, "unknown-9", "svc-ingest", "+", "#", "a/b", "", "x" * 200])
topics = st.one_of(
    st.builds(lambda d, k: f"fleet/v1/{d}/{k}", _ids, _kinds),
    st.text(max_size=80),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> Inbound:
    """A valid message of a registered device with one structural mutation."""
    base = draw(
        st.sampled_from(
            [
                _telemetry("dev-1", 2, cpu=99.0),  # a replay of a stored seq, other content
                _telemetry("dev-2", 10),
                _fault("dev-1", 3),
                _fault("dev-2", 11),
                _presence("dev-2", 12),
            ]
        )
    )
    doc = json.loads(base.payload)
    how = draw(st.sampled_from(["set", "delete", "truncate", "flip", "topic"]))
    topic = base.topic
    if how == "set":
        doc[draw(st.sampled_from([*doc.keys(), "extra"]))] = draw(json_values)
    elif how == "delete":
        doc.pop(draw(st.sampled_from(sorted(doc.keys()))))
    elif how == "topic":
        topic = draw(topics)
    payload = json.dumps(doc).encode()
    if how == "truncate":
        payload = payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    elif how == "flip":
        i = draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + payload[i + 1 :]
    return Inbound(topic, payload, T0)


garbage = st.builds(Inbound, topics, st.binary(max_size=2048), st.just(T0))


# -- tests -----------------------------------------------------------------------------


@FUZZ
@given(batch=st.lists(garbage, min_size=1, max_size=8))
def test_arbitrary_bytes_never_crash_and_are_counted(fleet: Fleet, batch: list[Inbound]) -> None:
    result = fleet.feed(batch)
    # Random bytes are never a storable message.
    assert sum(result.accepted.values()) == 0


@FUZZ
@given(batch=st.lists(mutated_messages(), min_size=1, max_size=8))
def test_mutated_messages_never_crash_or_alter_stored_data(
    fleet: Fleet, batch: list[Inbound]
) -> None:
    fleet.feed(batch)


def test_a_replayed_message_is_dropped_even_with_new_content(fleet: Fleet) -> None:
    replay = _telemetry("dev-1", 1, cpu=1.0)  # same boot_id and seq as a stored message
    result = fleet.feed([replay])
    assert result.duplicates == 1
    assert not result.accepted
    with fleet.sessions() as s:
        key = s.execute(select(Device.id).where(Device.device_id == "dev-1")).scalar_one()
        cpu = s.execute(
            select(TelemetrySample.cpu_pct).where(
                TelemetrySample.device_key == key, TelemetrySample.ts == T0 + 1
            )
        ).scalar_one()
    assert cpu == 10.0


def test_a_device_cannot_report_for_another_through_its_topic(fleet: Fleet) -> None:
    forged = _telemetry("dev-2", 500)
    result = fleet.feed([Inbound(p.topic("dev-1", p.Kind.TELEMETRY), forged.payload, T0)])
    assert result.rejected == {"device_mismatch": 1}
    with fleet.sessions() as s:
        rows = s.execute(select(TelemetrySample.ts).where(TelemetrySample.ts == T0 + 500)).all()
    assert rows == []


def test_unknown_and_reserved_ids_are_rejected(fleet: Fleet) -> None:
    result = fleet.feed([_telemetry("unknown-9", 1), _telemetry("svc-ingest", 1)])
    assert result.rejected == {"unknown_device": 2}
