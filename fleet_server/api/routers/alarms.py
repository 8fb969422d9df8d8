"""``/api/v1/alarms`` and ``/api/v1/fleet``: alarms and fleet-wide fault views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from fleet_server.api.deps import (
    PageParams,
    current_actor,
    get_session,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas import AlarmOut, FaultRates, FleetSummary, Page
from fleet_server.services import alarms
from fleet_server.services.alarms import GROUPABLE, AlarmFilter
from fleet_server.services.audit import Actor

router = APIRouter(prefix="/api/v1", tags=["alarms"], responses=ERROR_RESPONSES)


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
    filt = AlarmFilter(state, severity, code, device_id, acked)
    return page_body(alarms.list_alarms(session, filt, params))


@router.post("/alarms/{alarm_id}/ack", response_model=AlarmOut, summary="Acknowledge an alarm")
def ack_alarm(
    *,
    alarm_id: int,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Record who acknowledged the alarm (it stays open until the device clears it)."""
    return alarms.acknowledge(session, alarm_id, actor=actor, **stamp(request))


@router.get("/fleet/fault-rates", response_model=FaultRates, summary="Fault rate per group")
def get_fault_rates(
    *,
    by: Annotated[str, Query(description=f"one of {', '.join(GROUPABLE)}")],
    since: datetime | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Share of devices that raised an alarm, per model / hardware revision / batch /
    software version / region."""
    rows = alarms.fault_rates(session, by, since.timestamp() if since else None)
    return {"by": by, "since": since, "rows": rows}


@router.get("/fleet/summary", response_model=FleetSummary, summary="Fleet head counts")
def summary(session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """Devices per presence state and open alarms per severity."""
    return alarms.fleet_summary(session)
