"""The ingest batch writer: decode, dedupe and store device messages in one transaction.

The MQTT adapter hands a list of raw messages to :meth:`BatchWriter.write`; only after it
returns (the transaction committed) may the adapter acknowledge them to the broker. A
failure raises and leaves nothing half-stored; the adapter retries the same batch and the
``(device, boot_id, seq)`` key turns the retry into a no-op for what already landed.

What is counted is what happened: an update report the server refuses (it names an
execution that is not the device's) is ``rejected{unknown_execution}`` and does not keep
its ``(boot_id, seq)`` key, so a redelivery is refused and counted again rather than
passing as a duplicate; a telemetry sample whose ``(device, ts)`` is already stored is
not stored again and is counted in ``samples_skipped`` as ``same_sample`` (identical) or
``ts_conflict`` (different values: the first one is kept, and a WARNING says so).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from fleet_server.db.dialect import (
    insert_new_rows,
    lock_in_order,
)
from fleet_server.db.models import (
    CommandRecord,
    Device,
    DeviceEvent,
    ReceivedMessage,
    TelemetrySample,
)
from fleet_server.domain.presence import (
    PresenceMessage,
    apply_presence,
    mark_traffic,
)
from fleet_server.errors import FleetError
from fleet_server.services import registry
from fleet_server.services.alarms import apply_fault_events
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.clock_offsets import measure_clocks, skew_alarms
from fleet_server.services.deployments import (
    apply_install_rejection,
    apply_update_report,
)
from fleet_server.services.ingest_devices import DeviceRow, read_devices, update_devices
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.telemetry_rows import (
    TS_CONFLICT,
    sample_columns,
    sample_row,
    skip_reason,
)

log = logging.getLogger(__name__)

"""``protocol.Sample`` signals, each stored in its own telemetry column (declared once in
``protocol.messages.Sample``)."""


class Inbound(NamedTuple):
    """A raw message as received from the broker (immutable; a named tuple, the
    cheapest immutable record to build once per message)."""

    topic: str
    payload: bytes
    received_at: float


@dataclass
class BatchResult:
    """What one committed batch did (the adapter acks every message regardless)."""

    accepted: Tally[str] = field(default_factory=Tally)
    rejected: Tally[str] = field(default_factory=Tally)
    duplicates: int = 0
    samples: int = 0
    """Samples actually stored."""
    skipped_samples: Tally[str] = field(default_factory=Tally)
    """Samples not stored because their ``(device, ts)`` already was, by reason."""

    def add(self, other: BatchResult) -> None:
        """Fold ``other`` (a part of the same batch) into this result."""
        self.accepted.update(other.accepted)
        self.rejected.update(other.rejected)
        self.duplicates += other.duplicates
        self.samples += other.samples
        self.skipped_samples.update(other.skipped_samples)

    @property
    def total(self) -> int:
        """Messages handled (accepted + rejected + duplicates)."""
        return sum(self.accepted.values()) + sum(self.rejected.values()) + self.duplicates


_sample_ts = attrgetter("ts")
_received_at = attrgetter("received_at")


@dataclass(slots=True)
class _Samples:
    """A batch's telemetry samples, with each one's device key."""

    keys: list[int] = field(default_factory=list)
    samples: list[p.Sample] = field(default_factory=list)


def _apply_update(
    session: Session, dev: DeviceRow, msg: p.UpdateStateChanged, item: Inbound
) -> bool:
    """Move the execution the report names; False when it names one that is not this
    device's (the report is then refused, never applied or stored; a savepoint undoes
    whatever the refused report had changed)."""
    if msg.execution_id is None:
        return True
    device = session.get(Device, dev.key)
    if device is None:  # pragma: no cover - the row was read in this transaction
        return False
    try:
        with session.begin_nested():
            apply_update_report(session, device, msg, now=item.received_at)
    except FleetError:
        log.warning(
            "device %s reported on unknown execution %r; refused",
            msg.device_id,
            msg.execution_id,
        )
        return False
    if msg.state in (p.UpdateState.COMMITTED, p.UpdateState.ROLLED_BACK):
        dev.software_version = device.software_version
        if dev.boot and "software_version" in dev.boot:
            # A Boot earlier in this batch is written last: it must not undo the report.
            dev.boot["software_version"] = device.software_version
    return True


class BatchWriter:
    """Stores batches of device messages; one instance per ingest worker."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        metrics: IngestMetrics | None = None,
        auto_register: bool = False,
        clock: Clock = system_clock,
        max_clock_skew_s: float = 120.0,
        activate_on_first_contact: bool = False,
    ) -> None:
        self.sessions = sessions
        self.max_clock_skew_s = max_clock_skew_s
        self.metrics = metrics or IngestMetrics()
        self.auto_register = auto_register
        self.activate_on_first_contact = activate_on_first_contact
        """Set a registry activation date on a device's first contact when it has none."""
        self.clock = clock

    # -- public --------------------------------------------------------------------

    def write(self, batch: list[Inbound]) -> BatchResult:
        """Decode, dedupe and store ``batch`` in one transaction, then count it.

        A storage error that is not caused by one message (database down) propagates
        after rollback so the caller retries; a data error isolates the offending
        message(s), which are rejected as ``unstorable`` instead of blocking the stream.
        """
        try:
            result = self._write_once(batch)
        except (IntegrityError, DataError):
            if len(batch) == 1:
                log.exception("message on %s cannot be stored; rejected", batch[0].topic)
                result = BatchResult()
                result.rejected["unstorable"] += 1
            else:
                result = BatchResult()
                for one in batch:
                    result.add(self.write_uncounted([one]))
        self._count(batch, result)
        return result

    def write_uncounted(self, batch: list[Inbound]) -> BatchResult:
        """Like :meth:`write` without touching the metrics (used to isolate bad rows)."""
        try:
            return self._write_once(batch)
        except (IntegrityError, DataError):
            result = BatchResult()
            result.rejected["unstorable"] += len(batch)
            return result

    # -- internals -----------------------------------------------------------------

    def _count(self, batch: list[Inbound], result: BatchResult) -> None:
        m = self.metrics
        for kind, n in result.accepted.items():
            m.messages.labels(kind=kind).inc(n)
        for reason, n in result.rejected.items():
            m.rejected.labels(reason=reason).inc(n)
        if result.duplicates:
            m.duplicates.inc(result.duplicates)
        if result.samples:
            m.samples.inc(result.samples)
        for reason, n in result.skipped_samples.items():
            m.samples_skipped.labels(reason=reason).inc(n)
        if batch:
            now = self.clock()
            m.lag.set(max(0.0, now - min(map(_received_at, batch))))
            m.batch_size.observe(len(batch))

    def _decode(self, batch: Iterable[Inbound], result: BatchResult) -> list[tuple[Inbound, Any]]:
        decoded = []
        for item in batch:
            try:
                decoded.append((item, p.decode(item.topic, item.payload)))
            except p.ProtocolDecodeError as exc:
                result.rejected[exc.reason.value] += 1
        return decoded

    def _write_once(self, batch: list[Inbound]) -> BatchResult:
        result = BatchResult()
        decoded = self._decode(batch, result)
        if not decoded:
            return result
        now = self.clock()
        with self.sessions() as session, session.begin():
            devices = read_devices(
                session, {m.device_id for _, m in decoded}, now, self.auto_register
            )
            # Resolve devices and drop in-batch duplicates.
            candidates: list[tuple[Inbound, Any, DeviceRow]] = []
            keys_seen: set[tuple[int, str, int]] = set()
            repeats: Tally[tuple[int, str, int]] = Tally()
            for item, msg in decoded:
                dev = devices.get(msg.device_id)
                if dev is None:
                    result.rejected["unknown_device"] += 1
                    continue
                if dev.status == "decommissioned":
                    result.rejected["decommissioned"] += 1
                    continue
                key = (dev.key, msg.boot_id, msg.seq)
                if key in keys_seen:
                    repeats[key] += 1
                    continue
                keys_seen.add(key)
                candidates.append((item, msg, dev))
            result.duplicates += sum(repeats.values())
            if not candidates:
                return result
            # Dedupe against what is already stored: the rows skipped are the repeats.
            # (keys_seen made the candidates' keys distinct, as insert_new_rows needs.)
            repeated = insert_new_rows(
                session,
                ReceivedMessage.__table__,
                {
                    "device_key": [dev.key for _, _, dev in candidates],
                    "boot_id": [msg.boot_id for _, msg, _ in candidates],
                    "seq": [msg.seq for _, msg, _ in candidates],
                    "received_at": [item.received_at for item, _, _ in candidates],
                },
            )
            if repeated:
                result.duplicates += len(repeated)
                candidates = [c for n, c in enumerate(candidates) if n not in repeated]
            measure_clocks(candidates, self.max_clock_skew_s, now)
            samples = _Samples()
            events = self._apply(candidates, samples, result, now)
            if samples.keys:
                names = {dev.key: device_id for device_id, dev in devices.items()}
                self._store_samples(session, samples, result, names)
            # Every device row this batch writes, locked in one order before the first
            # write: two workers whose batches share devices then queue instead of
            # deadlocking (seen with 1,000 devices and two workers).
            lock_in_order(
                session,
                Device.__table__.c.id,
                [d.key for d in devices.values() if d.last_seen is not None],
            )
            if events:
                refused = self._events(session, events)
                if refused:
                    # Redeliveries of a refused report in this batch are refused too.
                    again = sum(repeats[key] for key in refused)
                    result.duplicates -= again
                    result.accepted["event"] -= len(refused)
                    result.rejected["unknown_execution"] += len(refused) + again
                    # The refused report keeps no dedupe key: a redelivery is refused again.
                    session.execute(
                        delete(ReceivedMessage).where(
                            tuple_(
                                ReceivedMessage.device_key,
                                ReceivedMessage.boot_id,
                                ReceivedMessage.seq,
                            ).in_(refused)
                        )
                    )
            update_devices(session, devices.values())
            skew_alarms(session, devices.values(), now, self.max_clock_skew_s)
            if self.activate_on_first_contact:
                registry.activate_on_first_contact(
                    session,
                    {d.key: d.last_seen for d in devices.values() if d.last_seen is not None},
                )
        return result

    def _apply(
        self,
        candidates: list[tuple[Inbound, Any, DeviceRow]],
        samples: _Samples,
        result: BatchResult,
        now: float,
    ) -> list[tuple[DeviceRow, Any, Inbound]]:
        """Fold the new messages, in order, into their device rows and ``samples``;
        return the events (stored and applied later)."""
        events: list[tuple[DeviceRow, Any, Inbound]] = []
        telemetry = presence = 0
        for item, msg, dev in candidates:
            dev.last_seen = max(dev.last_seen or 0.0, item.received_at)
            if isinstance(msg, p.Telemetry):
                telemetry += 1
                self._telemetry(dev, msg, samples)
            elif isinstance(msg, p.Presence):
                presence += 1
                self._presence(dev, msg, now, self.max_clock_skew_s)
                continue
            else:
                result.accepted["event"] += 1
                events.append((dev, msg, item))
            flipped = mark_traffic(dev.presence)
            if flipped is not None:
                dev.presence = flipped
                dev.changed_presence = True
                dev.presence_changed_at = now
        if telemetry:
            result.accepted["telemetry"] += telemetry
        if presence:
            result.accepted["presence"] += presence
        return events

    @staticmethod
    def _store_samples(
        session: Session,
        samples: _Samples,
        result: BatchResult,
        names: dict[int, str],
    ) -> None:
        """Insert the samples whose ``(device, ts)`` is new; count the others by
        :func:`skip_reason` against the kept sample (one SELECT for all of them)."""
        held: list[int] = []
        stamps = list(map(_sample_ts, samples.samples))
        if len(set(zip(samples.keys, stamps, strict=True))) == len(stamps):
            order: list[int] | range = range(len(stamps))  # no timestamp twice (usual)
        else:
            first: dict[tuple[int, float], int] = {}
            for n, key in enumerate(zip(samples.keys, stamps, strict=True)):
                if key in first:
                    held.append(n)  # the same timestamp twice in this batch
                else:
                    first[key] = n
            order = list(first.values())
        if len(order) == len(samples.keys):
            kept_samples, keys = samples.samples, samples.keys
        else:
            kept_samples = [samples.samples[n] for n in order]
            keys = [samples.keys[n] for n in order]
            stamps = [stamps[n] for n in order]
        # The (device, ts) keys are distinct here, as insert_new_rows needs.
        skipped = insert_new_rows(
            session, TelemetrySample.__table__, sample_columns(keys, stamps, kept_samples)
        )
        result.samples = len(order) - len(skipped)
        held += [order[n] for n in skipped]
        if not held:
            return
        rows = [sample_row(samples.keys[n], samples.samples[n]) for n in held]
        table = TelemetrySample.__table__
        wanted = {(row["device_key"], row["ts"]) for row in rows}
        kept = {
            (r.device_key, r.ts): r
            for r in session.execute(
                select(table).where(tuple_(table.c.device_key, table.c.ts).in_(list(wanted)))
            )
        }
        conflicts: Tally[int] = Tally()
        for row in rows:
            reason = skip_reason(row, kept[(row["device_key"], row["ts"])])
            result.skipped_samples[reason] += 1
            if reason == TS_CONFLICT:
                conflicts[row["device_key"]] += 1
        if conflicts:
            log.warning(
                "telemetry samples whose timestamp is already stored with other values "
                "were not stored (the first sample is kept): %s",
                ", ".join(f"{names[k]} x{n}" for k, n in sorted(conflicts.items())),
            )

    @staticmethod
    def _telemetry(dev: DeviceRow, msg: p.Telemetry, out: _Samples) -> None:
        batch = msg.samples
        out.samples += batch
        if len(batch) == 1:
            out.keys.append(dev.key)
            latest = batch[0]
        else:
            out.keys += [dev.key] * len(batch)
            latest = max(batch, key=_sample_ts)  # the first of the latest, like a loop
        newest_known = max(dev.vitals_ts or 0.0, dev.new_vitals_ts or 0.0)
        if dev.skewed:
            # The device clock is not trusted: the last received sample is the latest,
            # stamped with its ts corrected by the measured offset.
            dev.vitals = latest
            dev.new_vitals_ts = latest.ts - (dev.new_clock_offset_s or 0.0)
        elif latest.ts >= newest_known:
            dev.vitals = latest
            dev.new_vitals_ts = latest.ts
        dev.dropped_total = max(dev.dropped_total or 0, msg.dropped_total)

    @staticmethod
    def _presence(dev: DeviceRow, msg: p.Presence, now: float, max_skew_s: float) -> None:
        ts = msg.ts - (dev.new_clock_offset_s or 0.0) if dev.skewed else msg.ts
        new = apply_presence(
            dev.presence,
            PresenceMessage(msg.state is p.PresenceState.ONLINE, msg.boot_id, msg.seq, ts),
            now=now,
            max_skew_s=max_skew_s,
        )
        if new is None:
            return
        if new.online != dev.presence.online:
            dev.presence_changed_at = now
        dev.presence = new
        dev.changed_presence = True
        if msg.keepalive_s is not None:
            dev.boot = {**(dev.boot or {}), "keepalive_s": msg.keepalive_s}
        if msg.interval_s is not None:
            dev.boot = {**(dev.boot or {}), "interval_s": msg.interval_s}
        if msg.agent_version:
            dev.boot = {**(dev.boot or {}), "agent_version": msg.agent_version}

    @staticmethod
    def _events(
        session: Session, events: list[tuple[DeviceRow, Any, Inbound]]
    ) -> list[tuple[int, str, int]]:
        """Store events and apply them; returns the ``(device_key, boot_id, seq)`` keys
        of those refused (update reports naming an execution that is not the device's)."""
        rows = []
        faults = []
        refused = []
        for dev, msg, item in events:
            if isinstance(msg, p.UpdateStateChanged) and not _apply_update(session, dev, msg, item):
                refused.append((dev.key, msg.boot_id, msg.seq))
                continue
            data = msgspec.to_builtins(msg)
            for k in ("v", "device_id", "boot_id", "seq", "ts", "kind"):
                data.pop(k, None)
            kind = type(msg).__struct_config__.tag
            code = getattr(msg, "code", None)
            rows.append(
                {
                    "device_key": dev.key,
                    "boot_id": msg.boot_id,
                    "seq": msg.seq,
                    "ts": msg.ts,
                    "kind": kind,
                    "code": code,
                    "data": data,
                    "received_at": item.received_at,
                }
            )
            if isinstance(msg, p.FaultRaised | p.FaultCleared):
                faults.append((dev.key, dev.software_version, msg))
            elif isinstance(msg, p.Boot):
                boot = {"agent_version": msg.agent_version, "last_boot_id": msg.boot_id}
                if msg.software_version:
                    boot["software_version"] = msg.software_version
                    dev.software_version = msg.software_version
                if msg.slot is not None:
                    boot["slot"] = msg.slot
                dev.boot = {**(dev.boot or {}), **boot}
            elif isinstance(msg, p.CommandAck):
                session.execute(
                    update(CommandRecord)
                    .where(
                        CommandRecord.id == msg.command_id,
                        CommandRecord.device_key == dev.key,
                    )
                    .values(
                        status=msg.status.value,
                        reason=msg.reason.value if msg.reason else None,
                        detail=msg.detail,
                        result=dict(msg.result) or None,
                        updated_at=item.received_at,
                    )
                )
                not_started = (
                    msg.status is p.AckStatus.FAILED and msg.result.get("started") is False
                )
                if msg.status is p.AckStatus.REJECTED or not_started:
                    # refused, or accepted but never started (the agent stopped or
                    # restarted first): its execution fails now, not at its timeout
                    why = msg.reason.value if msg.reason else "rejected"
                    detail = f"{why}: {msg.detail}" if msg.detail else why
                    apply_install_rejection(
                        session,
                        dev.key,
                        msg.command_id,
                        msg.detail if not_started else detail,
                        now=item.received_at,
                        accepted=not_started,
                    )
        if rows:
            session.execute(DeviceEvent.__table__.insert(), rows)
        if faults:
            apply_fault_events(session, faults, now=max(item.received_at for *_, item in events))
        return refused
