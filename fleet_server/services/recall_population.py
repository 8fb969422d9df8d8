"""A recall's population: devices its scope matches now, the frozen members and why.

Opening a campaign freezes every matching device with the clauses it matched; later
questions ("who would opening freeze?", "who matches now but is not in?", "why is this
device (not) in?") are answered here from the registry and the frozen rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Device, RecallCampaign, RecallDevice
from fleet_server.domain.recall_scope import Scope, explain, parse_scope
from fleet_server.errors import NotFoundError
from fleet_server.services.registry import device_view


def candidates(session: Session, scope: Scope) -> list[tuple[Device, list[str]]]:
    """Devices matching the scope now, with the clauses they matched."""
    query = select(Device)
    if "models" in scope.lists:
        query = query.where(Device.model.in_(scope.lists["models"]))
    if "batches" in scope.lists:
        query = query.where(Device.batch.in_(scope.lists["batches"]))
    if "hw_revisions" in scope.lists:
        query = query.where(Device.hw_revision.in_(scope.lists["hw_revisions"]))
    if "software_versions" in scope.lists:
        query = query.where(Device.software_version.in_(scope.lists["software_versions"]))
    out = []
    for d in session.execute(query.order_by(Device.id)).scalars():
        ok, matched, _failed = explain(scope, device_view(d))
        if ok:
            out.append((d, matched))
    return out


def preview(session: Session, campaign: RecallCampaign) -> list[tuple[Device, list[str]]]:
    """Devices the scope matches now (the population opening would freeze)."""
    return candidates(session, parse_scope(campaign.scope))


def population_keys(session: Session, campaign_id: str) -> set[int]:
    """Device keys of the frozen population."""
    return set(
        session.execute(
            select(RecallDevice.device_key).where(RecallDevice.campaign_id == campaign_id)
        ).scalars()
    )


def new_matches(session: Session, campaign: RecallCampaign) -> list[tuple[Device, list[str]]]:
    """Devices that match the predicate now but are not in the frozen population (e.g.
    registered after opening): what ``add`` would bring in."""
    known = population_keys(session, campaign.id)
    return [(d, m) for d, m in preview(session, campaign) if d.id not in known]


def device_by_id(session: Session, device_id: str) -> Device | None:
    """The registry row of ``device_id``, if any."""
    return session.execute(select(Device).where(Device.device_id == device_id)).scalar_one_or_none()


def recall_device_view(rd: RecallDevice, d: Device) -> dict[str, Any]:
    """A population member as the API shows it."""
    return {
        "device_id": d.device_id,
        "serial": d.serial,
        "model": d.model,
        "batch": d.batch,
        "software_version": d.software_version,
        "state": rd.state,
        "matched": list(rd.matched),
        "added_how": rd.added_how,
        "added_at": rd.added_at,
        "state_changed_at": rd.state_changed_at,
        "remedied_via": rd.remedied_via,
        "note": rd.note,
        "safe_mode_command_id": rd.safe_mode_command_id,
    }


def population_query(campaign_id: str, state: str | None = None) -> Select[Any]:
    """Query of the frozen population, (member, device) rows by device id."""
    q = (
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .where(RecallDevice.campaign_id == campaign_id)
    )
    if state:
        q = q.where(RecallDevice.state == state)
    return q.order_by(Device.device_id)


def population(
    session: Session, campaign_id: str, state: str | None = None
) -> list[tuple[RecallDevice, Device]]:
    """The frozen population with each member's device, by device id."""
    return [(rd, d) for rd, d in session.execute(population_query(campaign_id, state)).all()]


def member(session: Session, campaign_id: str, device_id: str) -> tuple[RecallDevice, Device]:
    """One population member, or a 404 saying whether the device exists at all."""
    row = session.execute(
        select(RecallDevice, Device)
        .join(Device, Device.id == RecallDevice.device_key)
        .where(RecallDevice.campaign_id == campaign_id, Device.device_id == device_id)
    ).first()
    if row is None:
        raise NotFoundError(
            "not_found", f"device {device_id!r} is not in the population of recall {campaign_id}"
        )
    return row[0], row[1]


def explain_device(session: Session, campaign: RecallCampaign, device_id: str) -> dict[str, Any]:
    """Why a device is (or is not) affected: frozen reason and state, and the predicate
    evaluated on its registry fields now."""
    d = device_by_id(session, device_id)
    if d is None:
        raise NotFoundError("not_found", f"device {device_id!r} does not exist")
    ok, matched, failed = explain(parse_scope(campaign.scope), device_view(d))
    rd = session.get(RecallDevice, (campaign.id, d.id))
    return {
        "campaign_id": campaign.id,
        "device_id": device_id,
        "in_population": rd is not None,
        "state": rd.state if rd else None,
        "frozen_reason": list(rd.matched) if rd else None,
        "added_how": rd.added_how if rd else None,
        "matches_now": ok,
        "matched_now": matched,
        "failed_now": failed,
    }
