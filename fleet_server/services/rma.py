"""RMAs and parts: returns through their lifecycle, part genealogy and reuse.

A part's stints in devices are :class:`PartInstallation` rows carrying the part's
condition at install (new / refurbished), so failures per hour in service can be compared
between reused and new parts. RMAs move along :data:`~fleet_server.domain.lifecycles.RMA`
(the API names the next state) and parts along
:data:`~fleet_server.domain.lifecycles.PART_STOCK`.

The functions the API calls (:func:`create_part`, :func:`install_part`,
:func:`create_rma`, :func:`transition_rma`) commit and return the API's view; the
others never commit.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, Part, PartInstallation, Rma, WarrantyClaim
from fleet_server.domain.lifecycles import (
    PART_CONDITIONS,
    PART_STOCK,
    RMA,
    PartEvent,
    PartState,
    RmaState,
)
from fleet_server.domain.part_reliability import compare_rates
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.history import appended
from fleet_server.services.paging import Page, PageParams, fetch_page


def _device(session: Session, device_id: str) -> Device:
    d = session.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()
    if d is None:
        raise NotFoundError("not_found", f"device {device_id!r} does not exist")
    return d


def get_part(session: Session, serial: str) -> Part:
    """A part by serial, or a 404."""
    part = session.execute(select(Part).where(Part.serial == serial)).scalar_one_or_none()
    if part is None:
        raise NotFoundError("not_found", f"part {serial!r} does not exist")
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
) -> dict[str, Any]:
    """Register a part in stock (committed)."""
    if not serial or not kind:
        raise InvalidInputError("invalid_request", "serial and kind must not be empty")
    if condition not in PART_CONDITIONS:
        raise InvalidInputError(
            "invalid_request", f"condition: one of {', '.join(PART_CONDITIONS)}"
        )
    if session.execute(select(Part.id).where(Part.serial == serial)).first() is not None:
        raise ConflictError("conflict", f"part {serial!r} already exists")
    part = Part(
        serial=serial,
        kind=kind,
        condition=condition,
        stock_state=PART_STOCK.initial.value,
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
    session.commit()
    return part_view(session, part, now)


def _move_part(part: Part, wanted: PartState) -> None:
    """Move a part to ``wanted``; an illegal move is a 409 naming the allowed states."""
    part.stock_state = PART_STOCK.move_to(part.stock_state, wanted).value


def install_part(
    session: Session,
    actor: Actor,
    serial: str,
    device_id: str,
    *,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Put a part from stock into a device (a new stint, reuse recorded by condition);
    committed."""
    part = get_part(session, serial)
    device = _device(session, device_id)
    _move_part(part, PartState.INSTALLED)
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
    session.commit()
    return part_view(session, part, now)


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
        "allowed_next": [str(s) for s in RMA.next_states(r.state)],
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
) -> dict[str, Any]:
    """Open an RMA (state ``claimed``) for a device and/or a part, optionally from a
    claim; committed."""
    if claim_id is None and device_id is None and part_serial is None:
        raise InvalidInputError("invalid_request", "give claim_id, device_id or part_serial")
    device_key = part_id = None
    if claim_id is not None:
        claim = session.get(WarrantyClaim, claim_id)
        if claim is None:
            raise NotFoundError("not_found", f"claim {claim_id} does not exist")
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
        state=RMA.initial.value,
        history=appended([], RMA.initial.value, now=now, by=actor.label, note=note),
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
    session.commit()
    return rma_view(session, r)


def get_rma(session: Session, rma_id: int) -> Rma:
    """An RMA or a 404."""
    r = session.get(Rma, rma_id)
    if r is None:
        raise NotFoundError("not_found", f"rma {rma_id} does not exist")
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
) -> dict[str, Any]:
    """Move an RMA (committed); the part follows: ``returned`` ends its stint as a failure,
    ``refurbished`` puts it back in stock as refurbished with the repair in its history,
    ``scrapped`` retires it."""
    r = get_rma(session, rma_id)
    wanted = RMA.move_to(r.state, wanted).value
    before = rma_view(session, r)
    part = session.get(Part, r.part_id) if r.part_id is not None else None
    if part is not None:
        if wanted == RmaState.RETURNED and part.stock_state == PartState.INSTALLED:
            _end_stint(session, part, now, failed=True)
            _move_part(part, PartState.RETURNED)
        elif wanted == RmaState.REFURBISHED:
            if part.stock_state == PartState.RETURNED:
                _move_part(part, PartState.IN_STOCK)
            part.condition = "refurbished"
            part.repairs = [*part.repairs, {"rma_id": r.id, "at": now, "note": note}]
        elif wanted == RmaState.SCRAPPED and PartEvent.SCRAP in PART_STOCK.allowed_events(
            part.stock_state
        ):
            _move_part(part, PartState.SCRAPPED)
    r.state = wanted
    r.updated_at = now
    r.history = appended(list(r.history), wanted, now=now, by=actor.label, note=note)
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
    session.commit()
    return rma_view(session, r)


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


def rmas_query(state: str | None = None) -> Select[tuple[Rma]]:
    """RMAs (optionally in one state), newest first, for a paged list."""
    q = select(Rma)
    if state:
        q = q.where(Rma.state == state)
    return q.order_by(Rma.id.desc())


def parts_query(kind: str | None = None, stock_state: str | None = None) -> Select[tuple[Part]]:
    """Parts (optionally of one kind / stock state) by serial, for a paged list."""
    q = select(Part)
    if kind:
        q = q.where(Part.kind == kind)
    if stock_state:
        q = q.where(Part.stock_state == stock_state)
    return q.order_by(Part.serial)


def show_rma(session: Session, rma_id: int) -> dict[str, Any]:
    """One RMA with its history and the moves allowed next."""
    return rma_view(session, get_rma(session, rma_id))


def show_part(session: Session, serial: str, now: float) -> dict[str, Any]:
    """One part with its genealogy."""
    return part_view(session, get_part(session, serial), now)


def parts_reliability(session: Session, now: float, kind: str | None = None) -> dict[str, Any]:
    """Failures per 1000 hours in service of parts installed new vs refurbished, with
    their intervals and the refurbished / new ratio."""
    return {"kind": kind, **compare_rates(reliability_by_condition(session, now, kind))}


def list_rmas(
    session: Session, params: PageParams, state: str | None = None
) -> Page[dict[str, Any]]:
    """One page of RMAs, newest first."""
    page = fetch_page(session, rmas_query(state), params, scalars=True)
    return page.map(lambda rma: rma_view(session, rma))


def list_parts(
    session: Session,
    params: PageParams,
    now: float,
    kind: str | None = None,
    stock_state: str | None = None,
) -> Page[dict[str, Any]]:
    """One page of parts by serial, with their genealogy."""
    page = fetch_page(session, parts_query(kind, stock_state), params, scalars=True)
    return page.map(lambda part: part_view(session, part, now))
