"""The device registry: create, import, filter, update and decommission devices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import String, cast, select, update
from sqlalchemy.orm import Session

from fleet_server.db.models import Device
from fleet_server.domain.device_rows import RowError, parse_device_csv, validate_fields
from fleet_server.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

EDITABLE = (
    "serial",
    "model",
    "hw_revision",
    "batch",
    "production_date",
    "activation_date",
    "region",
    "timezone",
    "owner",
    "channel",
    "tags",
)


def device_view(d: Device) -> dict[str, Any]:
    """Every registry field of a device, JSON-friendly (dates as ISO strings)."""
    return {
        "device_id": d.device_id,
        "serial": d.serial,
        "model": d.model,
        "hw_revision": d.hw_revision,
        "batch": d.batch,
        "production_date": d.production_date.isoformat() if d.production_date else None,
        "activation_date": d.activation_date.isoformat() if d.activation_date else None,
        "region": d.region,
        "timezone": d.timezone,
        "owner": d.owner,
        "channel": d.channel,
        "tags": list(d.tags or []),
        "status": d.status,
        "decommissioned_at": d.decommissioned_at,
        "created_at": d.created_at,
        "software_version": d.software_version,
        "slot": d.slot,
        "agent_version": d.agent_version,
        "presence": d.presence,
        "presence_reason": d.presence_reason,
        "presence_changed_at": d.presence_changed_at,
        "last_seen": d.last_seen,
        "keepalive_s": d.keepalive_s,
        "interval_s": d.interval_s,
        "clock_offset_s": d.clock_offset_s,
        "quarantine_cleared_at": d.quarantine_cleared_at,
        "open_faults": d.open_faults,
        "vitals": d.vitals,
        "dropped_total": d.dropped_total,
    }


@dataclass
class DeviceFilter:
    """Filters over every registry field; unset fields do not filter."""

    device_id: str | None = None
    device_ids: list[str] | None = None
    """Exactly these devices (a static group); ``[]`` matches none, None does not filter."""
    device_id_prefix: str | None = None
    serial: str | None = None
    model: str | None = None
    hw_revision: str | None = None
    batch: str | None = None
    region: str | None = None
    timezone: str | None = None
    owner: str | None = None
    channel: str | None = None
    status: str | None = None
    software_version: str | None = None
    slot: str | None = None
    presence: str | None = None
    tags: list[str] = field(default_factory=list)
    has_open_faults: bool | None = None
    produced_from: date | None = None
    produced_to: date | None = None
    activated_from: date | None = None
    activated_to: date | None = None
    seen_after: float | None = None
    seen_before: float | None = None

    def clauses(self) -> list[Any]:
        """SQL conditions for this filter."""
        out: list[Any] = []
        for name in (
            "device_id",
            "serial",
            "model",
            "hw_revision",
            "batch",
            "region",
            "timezone",
            "owner",
            "channel",
            "status",
            "software_version",
            "slot",
            "presence",
        ):
            value = getattr(self, name)
            if value is not None:
                out.append(getattr(Device, name) == value)
        if self.device_ids is not None:
            out.append(Device.device_id.in_(self.device_ids))
        if self.device_id_prefix:
            out.append(Device.device_id.startswith(self.device_id_prefix, autoescape=True))
        for tag in self.tags:
            # tags are a sorted JSON array of strings; match the quoted element
            needle = '"' + tag.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out.append(cast(Device.tags, String).contains(needle, autoescape=True))
        if self.has_open_faults is not None:
            out.append(Device.open_faults > 0 if self.has_open_faults else Device.open_faults == 0)
        if self.produced_from:
            out.append(Device.production_date >= self.produced_from)
        if self.produced_to:
            out.append(Device.production_date <= self.produced_to)
        if self.activated_from:
            out.append(Device.activation_date >= self.activated_from)
        if self.activated_to:
            out.append(Device.activation_date <= self.activated_to)
        if self.seen_after is not None:
            out.append(Device.last_seen >= self.seen_after)
        if self.seen_before is not None:
            out.append(Device.last_seen < self.seen_before)
        return out


def list_devices(session: Session, filt: DeviceFilter, params: PageParams) -> Page[Device]:
    """One page of devices matching ``filt``, ordered by device id, and the total."""
    query = select(Device).where(*filt.clauses()).order_by(Device.device_id)
    return fetch_page(session, query, params, scalars=True)


def get_device(session: Session, device_id: str) -> Device:
    """The device, or :class:`NotFoundError` ``not_found``."""
    device = session.execute(
        select(Device).where(Device.device_id == device_id)
    ).scalar_one_or_none()
    if device is None:
        raise NotFoundError("not_found", f"device {device_id!r} is not registered")
    return device


def _new_device(values: dict[str, Any], now: float) -> Device:
    return Device(
        device_id=values["device_id"],
        serial=values.get("serial"),
        model=values.get("model"),
        hw_revision=values.get("hw_revision"),
        batch=values.get("batch"),
        production_date=values.get("production_date"),
        activation_date=values.get("activation_date"),
        region=values.get("region"),
        timezone=values.get("timezone"),
        owner=values.get("owner"),
        channel=values.get("channel") or "production",
        tags=values.get("tags") or [],
        status="active",
        created_at=now,
        presence="unknown",
        dropped_total=0,
        open_faults=0,
    )


def _conflicts(session: Session, rows: list[dict[str, Any]]) -> list[RowError]:
    ids = [r["device_id"] for r in rows]
    serials = [r["serial"] for r in rows if r.get("serial")]
    errors: list[RowError] = []
    taken_ids: set[str] = set()
    taken_serials: set[str] = set()
    for chunk in range(0, len(ids), 500):
        taken_ids |= set(
            session.execute(
                select(Device.device_id).where(Device.device_id.in_(ids[chunk : chunk + 500]))
            ).scalars()
        )
    for chunk in range(0, len(serials), 500):
        taken_serials |= set(
            session.execute(
                select(Device.serial).where(Device.serial.in_(serials[chunk : chunk + 500]))
            ).scalars()
        )
    for r in rows:
        line = r.get("_line", 0)
        if r["device_id"] in taken_ids:
            errors.append(RowError(line, "device_id", f"{r['device_id']!r} is already registered"))
        if r.get("serial") in taken_serials:
            errors.append(RowError(line, "serial", f"{r['serial']!r} is already registered"))
    return errors


def create_device(
    session: Session,
    raw: dict[str, Any],
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> Device:
    """Register one device (validated like a CSV row), audit and commit."""
    values, errors = validate_fields(raw)
    if errors:
        raise InvalidInputError(
            "invalid_device",
            "the device is invalid",
            [{"field": c, "message": m} for c, m in errors],
        )
    conflicts = _conflicts(session, [values])
    if conflicts:
        raise ConflictError(
            "conflict",
            conflicts[0].message,
            [{"field": e.column, "message": e.message} for e in conflicts],
        )
    device = _new_device(values, now)
    session.add(device)
    session.flush()
    audit.record(
        session,
        actor,
        "device.create",
        "device",
        device.device_id,
        now=now,
        after=device_view(device),
        request_id=request_id,
    )
    session.commit()
    return device


def import_csv(
    session: Session,
    text: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> int:
    """Import a factory CSV (every row or none) and commit. Raises InvalidInputError
    ``invalid_csv`` with per-row errors (line, column, message); returns the number of
    devices added."""
    parsed = parse_device_csv(text)
    errors = parsed.errors or _conflicts(session, parsed.rows)
    if errors:
        raise InvalidInputError(
            "invalid_csv",
            f"{len(errors)} error(s) in the CSV; nothing was imported",
            [e.as_dict() for e in errors],
        )
    if not parsed.rows:
        raise InvalidInputError("invalid_csv", "the CSV has no data rows; nothing was imported", [])
    for values in parsed.rows:
        session.add(_new_device(values, now))
    session.flush()
    audit.record(
        session,
        actor,
        "device.import",
        "device",
        None,
        now=now,
        after={"count": len(parsed.rows), "device_ids": [r["device_id"] for r in parsed.rows]},
        request_id=request_id,
    )
    session.commit()
    return len(parsed.rows)


def update_device(
    session: Session,
    device_id: str,
    raw: dict[str, Any],
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> Device:
    """Change registry fields of a device (not its id or reported state), audit, commit."""
    device = get_device(session, device_id)
    not_editable = [k for k in raw if k not in EDITABLE]
    if not_editable:
        raise InvalidInputError(
            "invalid_device",
            f"field(s) {', '.join(not_editable)} cannot be changed; "
            f"editable: {', '.join(EDITABLE)}",
        )
    values, errors = validate_fields(raw, partial=True)
    if errors:
        raise InvalidInputError(
            "invalid_device",
            "the change is invalid",
            [{"field": c, "message": m} for c, m in errors],
        )
    if values.get("serial") and values["serial"] != device.serial:
        taken = session.execute(select(Device.id).where(Device.serial == values["serial"])).first()
        if taken:
            raise ConflictError("conflict", f"serial {values['serial']!r} is already registered")
    before = device_view(device)
    for key, value in values.items():
        if key == "channel" and value is None:
            continue  # the channel cannot be blanked
        setattr(device, key, value if key != "tags" else (value or []))
    session.flush()
    audit.record(
        session,
        actor,
        "device.update",
        "device",
        device_id,
        now=now,
        before=before,
        after=device_view(device),
        request_id=request_id,
    )
    session.commit()
    return device


def decommission_device(
    session: Session,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "",
    request_id: str | None = None,
) -> Device:
    """Take a device out of the fleet: its messages are rejected from now on, its
    history is kept. The caller commits (:func:`fleet_server.services.decommission.
    decommission_and_revoke` also revokes its certificates in the same transaction)."""
    device = get_device(session, device_id)
    if device.status == "decommissioned":
        raise ConflictError("conflict", f"device {device_id!r} is already decommissioned")
    before = device_view(device)
    device.status = "decommissioned"
    device.decommissioned_at = now
    session.flush()
    after = device_view(device)
    after["reason"] = reason
    audit.record(
        session,
        actor,
        "device.decommission",
        "device",
        device_id,
        now=now,
        before=before,
        after=after,
        request_id=request_id,
    )
    return device


def unquarantine_device(
    session: Session,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> Device:
    """Forget the versions that failed on this device so far (the server's view: rollouts
    may select it again for them); audited, committed. The agent keeps its own list: see
    ``fleet-agent unquarantine`` in the README."""
    device = get_device(session, device_id)
    before = {"quarantine_cleared_at": device.quarantine_cleared_at}
    device.quarantine_cleared_at = now
    audit.record(
        session,
        actor,
        "device.unquarantine",
        "device",
        device_id,
        now=now,
        before=before,
        after={"quarantine_cleared_at": now},
        request_id=request_id,
    )
    session.commit()
    return device


def activate_on_first_contact(session: Session, first_contact: Mapping[int, float]) -> int:
    """Set ``activation_date`` (the UTC day of first contact) on devices that have none.

    ``first_contact`` maps device keys to the receive time of the message that reached
    them; devices with an activation date keep it (the registry's value wins). Warranty
    coverage and reliability analytics count from this date, so a fleet imported without
    activation dates still has one once its devices report (``[registry]
    activate_on_first_contact``). Returns how many devices were activated."""
    if not first_contact:
        return 0
    by_day: dict[date, list[int]] = {}
    for key, ts in first_contact.items():
        by_day.setdefault(datetime.fromtimestamp(ts, UTC).date(), []).append(key)
    activated = 0
    for day, keys in by_day.items():
        result = session.execute(
            update(Device)
            .where(Device.id.in_(keys), Device.activation_date.is_(None))
            .values(activation_date=day)
        )
        activated += int(getattr(result, "rowcount", 0) or 0)
    return activated
