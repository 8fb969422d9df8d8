"""``/api/v1/alarms`` and ``/api/v1/fleet``: alarms and fleet-wide fault views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.api.deps import (
    PageParams,
    context,
    current_actor,
    get_session,
    page,
    page_params,
    request_id,
)
from fleet_server.api.errors import ERROR_RESPONSES, ApiError
from fleet_server.api.schemas import AlarmOut, FaultRates, FleetSummary, Page
from fleet_server.db.models import Alarm, Device
from fleet_server.services import audit
from fleet_server.services.alarms import GROUPABLE, fault_rates
from fleet_server.services.audit import Actor
from fleet_server.services.presence import presence_counts

router = APIRouter(prefix="/api/v1", tags=["alarms"], responses=ERROR_RESPONSES)


def alarm_view(a: Alarm, device_id: str) -> dict[str, Any]:
    """An alarm as the API shows it."""
    return {
        "id": a.id,
        "device_id": device_id,
        "code": a.code,
        "severity": a.severity,
        "state": a.state,
        "raised_at": a.raised_at,
        "cleared_at": a.cleared_at,
        "acked_at": a.acked_at,
        "acked_by": a.acked_by,
        "value": a.value,
        "threshold": a.threshold,
        "message": a.message,
        "occurrences": a.occurrences,
        "software_version": a.software_version,
    }


@router.get("/alarms", response_model=Page[AlarmOut], summary="List alarms")
def list_alarms(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    state: Annotated[str | None, Query(pattern="^(open|cleared|all)$")] = "open",
    severity: str | None = None,
    code: str | None = None,
    device_id: str | None = None,
    acked: bool | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Alarms, open ones by default, newest first."""
    where: list[Any] = []
    if state and state != "all":
        where.append(Alarm.state == state)
    if severity:
        where.append(Alarm.severity == severity)
    if code:
        where.append(Alarm.code == code)
    if device_id:
        where.append(Device.device_id == device_id)
    if acked is not None:
        where.append(Alarm.acked_at.is_not(None) if acked else Alarm.acked_at.is_(None))
    base = select(Alarm, Device.device_id).join(Device, Device.id == Alarm.device_key)
    total = session.execute(
        select(func.count())
        .select_from(Alarm)
        .join(Device, Device.id == Alarm.device_key)
        .where(*where)
    ).scalar_one()
    rows = session.execute(
        base.where(*where)
        .order_by(Alarm.raised_at.desc(), Alarm.id.desc())
        .limit(params.limit)
        .offset(params.offset)
    ).all()
    return page([alarm_view(a, d) for a, d in rows], int(total), params)


@router.post("/alarms/{alarm_id}/ack", response_model=AlarmOut, summary="Acknowledge an alarm")
def ack_alarm(
    *,
    alarm_id: int,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Record who acknowledged the alarm (it stays open until the device clears it)."""
    row = session.execute(
        select(Alarm, Device.device_id)
        .join(Device, Device.id == Alarm.device_key)
        .where(Alarm.id == alarm_id)
    ).first()
    if row is None:
        raise ApiError(404, "not_found", f"alarm {alarm_id} does not exist")
    alarm, device_id = row
    if alarm.acked_at is not None:
        raise ApiError(409, "conflict", f"alarm {alarm_id} was already acknowledged")
    before = alarm_view(alarm, device_id)
    now = context(request).clock()
    alarm.acked_at = now
    alarm.acked_by = actor.label
    after = alarm_view(alarm, device_id)
    audit.record(
        session,
        actor,
        "alarm.ack",
        "alarm",
        str(alarm_id),
        now=now,
        before=before,
        after=after,
        request_id=request_id(request),
    )
    session.commit()
    return after


@router.get("/fleet/fault-rates", response_model=FaultRates, summary="Fault rate per group")
def get_fault_rates(
    *,
    by: Annotated[str, Query(description=f"one of {', '.join(GROUPABLE)}")],
    since: datetime | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Share of devices that raised an alarm, per model / hardware revision / batch /
    software version / region."""
    if by not in GROUPABLE:
        raise ApiError(
            422, "validation_error", f"by: must be one of {', '.join(GROUPABLE)}", {"by": by}
        )
    rows = fault_rates(session, by, since.timestamp() if since else None)
    return {"by": by, "since": since, "rows": rows}


@router.get("/fleet/summary", response_model=FleetSummary, summary="Fleet head counts")
def summary(session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """Devices per presence state and open alarms per severity."""
    active = session.execute(
        select(func.count()).select_from(Device).where(Device.status != "decommissioned")
    ).scalar_one()
    gone = session.execute(
        select(func.count()).select_from(Device).where(Device.status == "decommissioned")
    ).scalar_one()
    by_sev = dict(
        session.execute(
            select(Alarm.severity, func.count())
            .where(Alarm.state == "open")
            .group_by(Alarm.severity)
        ).all()
    )
    return {
        "devices": int(active),
        "decommissioned": int(gone),
        "presence": presence_counts(session),
        "open_alarms": int(sum(by_sev.values())),
        "open_alarms_by_severity": {k: int(v) for k, v in by_sev.items()},
    }
