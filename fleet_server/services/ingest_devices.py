"""The ingest's device rows: read once per batch, folded in memory, written back once.

:func:`read_devices` reads (and, with auto-registration, creates) the rows of a batch's
devices; the batch writer folds its messages into them; :func:`update_devices` writes
what changed (last seen, vitals, clock offset, presence, boot facts) in a few
statements for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import update
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.dialect import bulk_update, insert_ignore, select_in
from fleet_server.db.models import Device
from fleet_server.domain.presence import PresenceReason, PresenceView


@dataclass(slots=True)
class DeviceRow:
    """One device of a batch: what was read, and what the batch changes."""

    key: int
    status: str
    presence: PresenceView
    vitals_ts: float | None
    software_version: str | None
    changed_presence: bool = False
    presence_changed_at: float | None = None
    last_seen: float | None = None
    vitals: p.Sample | None = None
    """The latest sample of the batch (stored as the device's vitals)."""
    new_vitals_ts: float | None = None
    dropped_total: int | None = None
    boot: dict[str, Any] | None = None
    clock_offset_s: float | None = None
    new_clock_offset_s: float | None = None
    skewed: bool = False


_DEVICE_COLUMNS = [
    Device.__table__.c[name]
    for name in (
        "id",
        "device_id",
        "status",
        "presence",
        "presence_reason",
        "presence_boot_id",
        "presence_seq",
        "presence_ts",
        "presence_floor_seq",
        "vitals_ts",
        "software_version",
        "clock_offset_s",
    )
]

_ONLINE = {"online": True, "offline": False}


def _presence_view(row: Any) -> PresenceView:
    reason = PresenceReason(row.presence_reason) if row.presence_reason else None
    return PresenceView(
        _ONLINE.get(row.presence),
        reason,
        row.presence_boot_id,
        row.presence_seq,
        row.presence_ts,
        row.presence_floor_seq,
    )


def read_devices(
    session: Session, device_ids: set[str], now: float, auto_register: bool
) -> dict[str, DeviceRow]:
    """The rows of ``device_ids`` by device id; with ``auto_register`` the missing
    devices are created first (active, production channel)."""
    key = Device.__table__.c.device_id
    rows = select_in(session, _DEVICE_COLUMNS, key, sorted(device_ids))
    missing = device_ids - {r.device_id for r in rows}
    if missing and auto_register:
        session.execute(
            insert_ignore(session, Device),
            [
                {
                    "device_id": d,
                    "created_at": now,
                    "channel": "production",
                    "tags": [],
                    "status": "active",
                    "presence": "unknown",
                    "dropped_total": 0,
                    "open_faults": 0,
                }
                for d in sorted(missing)
            ],
        )
        rows += select_in(session, _DEVICE_COLUMNS, key, sorted(missing))
    return {
        r.device_id: DeviceRow(
            r.id,
            r.status,
            _presence_view(r),
            r.vitals_ts,
            r.software_version,
            clock_offset_s=r.clock_offset_s,
        )
        for r in rows
    }


def update_devices(session: Session, devices: Iterable[DeviceRow]) -> None:
    """Write back what the batch changed on each device it heard from."""
    seen = []
    vitals = []
    presence = []
    for dev in devices:
        if dev.last_seen is None:
            continue
        if dev.vitals is not None:
            vitals.append(
                {
                    "k": dev.key,
                    "last_seen": dev.last_seen,
                    "vitals": msgspec.to_builtins(dev.vitals),
                    "vitals_ts": dev.new_vitals_ts,
                    "dropped_total": dev.dropped_total or 0,
                    "clock_offset_s": dev.new_clock_offset_s,
                }
            )
        else:
            seen.append(
                {
                    "k": dev.key,
                    "last_seen": dev.last_seen,
                    "clock_offset_s": dev.new_clock_offset_s,
                }
            )
        if dev.changed_presence:
            pv = dev.presence
            presence.append(
                {
                    "k": dev.key,
                    "presence": "online" if pv.online else "offline",
                    "presence_reason": pv.reason.value if pv.reason else None,
                    "presence_boot_id": pv.boot_id,
                    "presence_seq": pv.seq,
                    "presence_ts": pv.ts,
                    "presence_floor_seq": pv.floor_seq,
                    "presence_changed_at": dev.presence_changed_at,
                }
            )
        if dev.boot:
            session.execute(update(Device).where(Device.id == dev.key).values(**dev.boot))
    table = Device.__table__
    for rows in (vitals, seen, presence):
        bulk_update(session, table, "id", rows)
