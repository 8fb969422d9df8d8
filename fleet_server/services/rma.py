"""RMAs and parts: returns through their lifecycle, part genealogy and reuse.

A part's stints in devices are :class:`PartInstallation` rows carrying the part's
condition at install (new / refurbished), so failures per hour in service can be compared
between reused and new parts.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, Part, PartInstallation, Rma, WarrantyClaim
from fleet_server.domain.lifecycles import PART_CONDITIONS, PART_STOCK, RMA, IllegalTransitionError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.recalls import illegal
from fleet_server.services.registry import RegistryError


def _device(session: Session, device_id: str) -> Device:
    d = session.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()
    if d is None:
        raise RegistryError("not_found", f"device {device_id!r} does not exist")
    return d


def get_part(session: Session, serial: str) -> Part:
    """A part by serial, or a 404."""
    part = session.execute(select(Part).where(Part.serial == serial)).scalar_one_or_none()
    if part is None:
        raise RegistryError("not_found", f"part {serial!r} does not exist")
    return part


def _current(session: Session, part: Part) -> PartInstallation | None:
    return session.execute(
        select(PartInstallation).where(
            PartInstallation.part_id == part.id, PartInstallation.removed_at.is_(None)
        )
    ).scalar_one_or_none()


def part_view(session: Session, part: Part, now: float) -> dict[str, Any]:
    """A part with its genealogy: installations, repairs, hours in service so far."""
    stints = list(
        session.execute(
            select(PartInstallation, Device.device_id)
            .outerjoin(Device, Device.id == PartInstallation.device_key)
            .where(PartInstallation.part_id == part.id)
            .order_by(PartInstallation.installed_at)
        ).all()
    )
    current = next((s for s, _ in stints if s.removed_at is None), None)
    hours = part.hours_in_service + ((now - current.installed_at) / 3600 if current else 0.0)
    return {
        "serial": part.serial,
        "kind": part.kind,
        "condition": part.condition,
        "stock_state": part.stock_state,
        "installed_on": next((d for s, d in stints if s.removed_at is None), None),
        "hours_in_service": round(hours, 3),
        "reuse_count": sum(1 for s, _ in stints if s.condition == "refurbished"),
        "repairs": list(part.repairs),
        "installations": [
            {
                "device_id": d,
                "condition": s.condition,
                "installed_at": s.installed_at,
                "removed_at": s.removed_at,
                "failed": s.failed,
            }
            for s, d in stints
        ],
    }


def create_part(
    session: Session,
    actor: Actor,
    *,
    serial: str,
    kind: str,
    now: float,
    condition: str = "new",
    request_id: str | None = None,
) -> Part:
    """Register a part in stock."""
    if not serial or not kind:
        raise RegistryError("invalid_request", "serial and kind must not be empty")
    if condition not in PART_CONDITIONS:
        raise RegistryError("invalid_request", f"condition: one of {', '.join(PART_CONDITIONS)}")
    if session.execute(select(Part.id).where(Part.serial == serial)).first() is not None:
        raise RegistryError("conflict", f"part {serial!r} already exists")
    part = Part(
        serial=serial,
        kind=kind,
        condition=condition,
        stock_state=PART_STOCK.initial,
        hours_in_service=0.0,
        repairs=[],
        created_at=now,
    )
    session.add(part)
    session.flush()
    audit.record(
        session,
        actor,
        "part.create",
        "part",
        serial,
        now=now,
        after={"serial": serial, "kind": kind, "condition": condition},
        request_id=request_id,
    )
    return part


def _move_part(part: Part, wanted: str) -> None:
    try:
        part.stock_state = PART_STOCK.check(part.stock_state, wanted)
    except IllegalTransitionError as exc:
        raise illegal(exc) from None


def install_part(
    session: Session,
    actor: Actor,
    serial: str,
    device_id: str,
    *,
    now: float,
    request_id: str | None = None,
) -> Part:
    """Put a part from stock into a device (a new stint, reuse recorded by condition)."""
    part = get_part(session, serial)
    device = _device(session, device_id)
    _move_part(part, "installed")
    part.installed_on = device.id
    session.add(
        PartInstallation(
            part_id=part.id, device_key=device.id, condition=part.condition, installed_at=now
        )
    )
    audit.record(
        session,
        actor,
        "part.install",
        "part",
        serial,
        now=now,
        after={"device_id": device_id, "condition": part.condition},
        request_id=request_id,
    )
    return part


def _end_stint(session: Session, part: Part, now: float, failed: bool) -> None:
    stint = _current(session, part)
    if stint is not None:
        stint.removed_at = now
        stint.failed = failed
        part.hours_in_service += max(0.0, now - stint.installed_at) / 3600
    part.installed_on = None


def rma_view(session: Session, r: Rma) -> dict[str, Any]:
    """An RMA as the API shows it."""
    device = session.get(Device, r.device_key) if r.device_key is not None else None
    part = session.get(Part, r.part_id) if r.part_id is not None else None
    return {
        "id": r.id,
        "state": r.state,
        "claim_id": r.claim_id,
        "device_id": device.device_id if device else None,
        "part_serial": part.serial if part else None,
        "note": r.note,
        "history": list(r.history),
        "allowed_next": list(RMA.allowed(r.state)),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }


def create_rma(
    session: Session,
    actor: Actor,
    *,
    now: float,
    claim_id: int | None = None,
    device_id: str | None = None,
    part_serial: str | None = None,
    note: str = "",
    request_id: str | None = None,
) -> Rma:
    """Open an RMA (state ``claimed``) for a device and/or a part, optionally from a claim."""
    if claim_id is None and device_id is None and part_serial is None:
        raise RegistryError("invalid_request", "give claim_id, device_id or part_serial")
    device_key = part_id = None
    if claim_id is not None:
        claim = session.get(WarrantyClaim, claim_id)
        if claim is None:
            raise RegistryError("not_found", f"claim {claim_id} does not exist")
        device_key = claim.device_key
        part_serial = part_serial or claim.part_serial
    if device_id is not None:
        device_key = _device(session, device_id).id
    if part_serial is not None:
        part = get_part(session, part_serial)
        part_id = part.id
        if device_key is None:
            device_key = part.installed_on
    r = Rma(
        claim_id=claim_id,
        device_key=device_key,
        part_id=part_id,
        state=RMA.initial,
        history=[{"state": RMA.initial, "at": now, "by": actor.label, "note": note}],
        note=note,
        created_at=now,
        updated_at=now,
    )
    session.add(r)
    session.flush()
    audit.record(
        session,
        actor,
        "rma.create",
        "rma",
        str(r.id),
        now=now,
        after=rma_view(session, r),
        request_id=request_id,
    )
    return r


def get_rma(session: Session, rma_id: int) -> Rma:
    """An RMA or a 404."""
    r = session.get(Rma, rma_id)
    if r is None:
        raise RegistryError("not_found", f"rma {rma_id} does not exist")
    return r


def transition_rma(
    session: Session,
    actor: Actor,
    rma_id: int,
    wanted: str,
    *,
    now: float,
    note: str = "",
    request_id: str | None = None,
) -> Rma:
    """Move an RMA; the part follows: ``returned`` ends its stint as a failure,
    ``refurbished`` puts it back in stock as refurbished with the repair in its history,
    ``scrapped`` retires it."""
    r = get_rma(session, rma_id)
    try:
        RMA.check(r.state, wanted)
    except IllegalTransitionError as exc:
        raise illegal(exc) from None
    before = rma_view(session, r)
    part = session.get(Part, r.part_id) if r.part_id is not None else None
    if part is not None:
        if wanted == "returned" and part.stock_state == "installed":
            _end_stint(session, part, now, failed=True)
            _move_part(part, "returned")
        elif wanted == "refurbished":
            if part.stock_state == "returned":
                _move_part(part, "in_stock")
            part.condition = "refurbished"
            part.repairs = [*part.repairs, {"rma_id": r.id, "at": now, "note": note}]
        elif wanted == "scrapped" and part.stock_state in ("returned", "in_stock"):
            _move_part(part, "scrapped")
    r.state = wanted
    r.updated_at = now
    r.history = [*r.history, {"state": wanted, "at": now, "by": actor.label, "note": note}]
    audit.record(
        session,
        actor,
        f"rma.{wanted}",
        "rma",
        str(r.id),
        now=now,
        before=before,
        after=rma_view(session, r),
        request_id=request_id,
    )
    return r


def reliability_by_condition(
    session: Session, now: float, kind: str | None = None
) -> dict[str, Any]:
    """Failures and hours in service per install condition (new vs refurbished)."""
    q = select(PartInstallation, Part.kind).join(Part, Part.id == PartInstallation.part_id)
    if kind:
        q = q.where(Part.kind == kind)
    out: dict[str, dict[str, float]] = {
        c: {"failures": 0, "hours": 0.0, "installations": 0} for c in PART_CONDITIONS
    }
    for stint, _kind in session.execute(q).all():
        row = out[stint.condition]
        row["installations"] += 1
        row["failures"] += 1 if stint.failed else 0
        row["hours"] += max(0.0, (stint.removed_at or now) - stint.installed_at) / 3600
    return out
