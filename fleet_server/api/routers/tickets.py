"""``/api/v1/tickets``, ``/api/v1/support`` and ``/api/v1/status``: support tickets, SLA
clocks, the helpdesk importer, support analytics and the service status page."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    context,
    page_body,
    page_params,
    read_text_body,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.domain.roles import Role
from fleet_server.services import device_history, sla, slo, support_analytics, ticket_import
from fleet_server.services import tickets as svc

router = APIRouter(prefix="/api/v1", tags=["support"], responses=ERROR_RESPONSES)
MAX_IMPORT_BYTES = 256 * 1024 * 1024
"""An event log of a few million rows."""

Paging = Annotated[PageParams, Depends(page_params)]


class LinkIn(BaseModel):
    """What a ticket points at."""

    kind: str = Field(description="device, alarm, claim, rma, recall, rollout or advisory")
    ref: str = Field(min_length=1, max_length=128)


class TicketIn(BaseModel):
    """A new ticket; priority follows impact x urgency by the configured matrix."""

    title: str = Field(min_length=1, max_length=300)
    category: str = Field(
        description="device_hardware, device_software, web_mobile_app, cloud_infrastructure, "
        "security_incident or third_party_app"
    )
    requester: str = Field(min_length=1, max_length=200)
    requester_kind: str = Field(default="customer", pattern="^(customer|internal)$")
    customer: str | None = Field(default=None, max_length=200)
    impact: int = Field(default=3, ge=1, le=3)
    urgency: int = Field(default=3, ge=1, le=3)
    description: str = Field(default="", max_length=20000)
    assignment_group: str | None = Field(default=None, max_length=128)
    assignee: str | None = Field(default=None, max_length=128)
    vendor: str | None = Field(default=None, max_length=128)
    links: list[LinkIn] = Field(default_factory=list, max_length=50)


class TicketPatch(BaseModel):
    """Fields to change (absent = unchanged)."""

    title: str | None = Field(default=None, min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=20000)
    impact: int | None = Field(default=None, ge=1, le=3)
    urgency: int | None = Field(default=None, ge=1, le=3)
    category: str | None = None
    assignment_group: str | None = Field(default=None, max_length=128)
    assignee: str | None = Field(default=None, max_length=128)
    vendor: str | None = Field(default=None, max_length=128)
    customer: str | None = Field(default=None, max_length=200)


class MoveIn(BaseModel):
    """The ticket's next state."""

    state: str = Field(
        description="in_progress, pending_customer, pending_third_party, resolved, closed, "
        "reopened or cancelled"
    )
    note: str = Field(default="", max_length=2000)


class CommentIn(BaseModel):
    """A comment: public (an agent's is a response to the requester) or internal."""

    body: str = Field(min_length=1, max_length=20000)
    public: bool = False
    author_kind: str = Field(default="agent", pattern="^(agent|requester)$")


def _now(request: Request) -> float:
    return float(context(request).clock())


def _support(request: Request) -> Any:
    return context(request).settings.support


@router.get("/tickets", summary="List tickets")
def list_tickets(
    *,
    request: Request,
    params: Paging,
    session: Db,
    state: str | None = None,
    category: str | None = None,
    priority: int | None = None,
    assignee: str | None = None,
    device_id: str | None = None,
    open_only: bool = False,
) -> dict[str, Any]:
    """Tickets, newest first, each with its soonest SLA deadline (``breaching in 2 h``)."""
    f = svc.TicketFilter(state, category, priority, assignee, device_id, open_only)
    return page_body(svc.list_tickets(session, f, params, now=_now(request)))


@router.post("/tickets", status_code=201, summary="Open a ticket")
def create_ticket(*, body: TicketIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """State ``new``; links are checked to exist."""
    data = body.model_dump(exclude={"links"})
    n = svc.NewTicket(**data, links=[(x.kind, x.ref) for x in body.links])
    return svc.create_ticket(session, actor, n, _support(request), **stamp(request))


@router.get("/tickets/breaching", summary="Tickets breaching soon")
def breaching(
    *,
    request: Request,
    params: Paging,
    session: Db,
    within_h: Annotated[float, Query(gt=0, le=24 * 30)] = 4.0,
) -> dict[str, Any]:
    """Running SLA targets due within ``within_h`` hours (as of the last SLA tick)."""
    return page_body(sla.breaching_within(session, within_h * 3600, params, now=_now(request)))


@router.post(
    "/tickets/import",
    summary="Import a helpdesk event log (all rows or none)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "ServiceNow-style incident event log: number, incident_state, "
            "sys_updated_at, opened_at, resolved_at, closed_at, priority, made_sla, ...",
        }
    },
)
async def import_tickets(
    *,
    request: Request,
    session: Db,
    actor: Who,
    format: str = "servicenow",
    date_format: Annotated[str | None, Query(max_length=64)] = None,
    category: str = "device_software",
) -> dict[str, Any]:
    """Every problem is reported by line and column and nothing is imported."""
    text = await read_text_body(request, MAX_IMPORT_BYTES, "invalid_import", "log")
    return ticket_import.import_log(
        session,
        actor,
        text,
        fmt=format,
        date_format=date_format,
        category=category,
        **stamp(request),
    )


@router.get("/tickets/{number}", summary="One ticket")
def get_ticket(*, number: str, session: Db, actor: Who) -> dict[str, Any]:
    """The ticket with comments (internal ones for technicians and above), links, events."""
    internal = Role(actor.role).allows(Role.TECHNICIAN)
    return svc.show_ticket(session, number, internal=internal)


@router.patch("/tickets/{number}", summary="Change a ticket")
def patch_ticket(
    *, number: str, body: TicketPatch, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """One ``field`` event listing what changed; priority follows impact x urgency."""
    return svc.update_ticket(
        session,
        actor,
        number,
        body.model_dump(exclude_unset=True),
        _support(request),
        **stamp(request),
    )


@router.post("/tickets/{number}/transition", summary="Move a ticket")
def move_ticket(
    *, number: str, body: MoveIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Along the lifecycle table; an illegal move is a 409 naming the allowed states."""
    return svc.transition(
        session,
        actor,
        number,
        body.state,
        note=body.note,
        **stamp(request),
    )


@router.post("/tickets/{number}/comments", status_code=201, summary="Comment on a ticket")
def comment(
    *, number: str, body: CommentIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """An agent's public comment is a response (first response / next update)."""
    return svc.add_comment(
        session,
        actor,
        number,
        body.body,
        public=body.public,
        author_kind=body.author_kind,
        **stamp(request),
    )


@router.post("/tickets/{number}/links", status_code=201, summary="Link a ticket")
def add_link(
    *, number: str, body: LinkIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Point the ticket at a device, alarm, claim, RMA, recall or rollout."""
    return svc.link(
        session,
        actor,
        number,
        body.kind,
        body.ref,
        **stamp(request),
    )


@router.delete("/tickets/{number}/links/{kind}/{ref}", summary="Unlink a ticket")
def remove_link(
    *, number: str, kind: str, ref: str, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Remove one link."""
    return svc.link(
        session,
        actor,
        number,
        kind,
        ref,
        remove=True,
        **stamp(request),
    )


@router.get("/tickets/{number}/sla", summary="A ticket's SLA clocks")
def ticket_sla(*, number: str, request: Request, session: Db) -> dict[str, Any]:
    """Policy, each target's elapsed / remaining / due time, and the vendor clock."""
    return sla.ticket_sla(session, number, _support(request), _now(request))


@router.get("/tickets/{number}/timeline", summary="A ticket with its devices' evidence")
def ticket_timeline(*, number: str, session: Db, params: Paging) -> dict[str, Any]:
    """The ticket's events and, per linked device, that device's latest events."""
    t = svc.show_ticket(session, number, internal=False)
    devices = [x["ref"] for x in t["links"] if x["kind"] == "device"]
    return {
        "number": number,
        "events": t["events"],
        "devices": {d: page_body(device_history.events(session, d, params)) for d in devices},
    }


@router.get("/devices/{device_id}/tickets", summary="A device's tickets")
def device_tickets(
    *, device_id: str, request: Request, params: Paging, session: Db
) -> dict[str, Any]:
    """Tickets linked to the device, newest first (404 for an unknown device)."""
    svc.require_device(session, device_id)
    f = svc.TicketFilter(device_id=device_id)
    return page_body(svc.list_tickets(session, f, params, now=_now(request)))


@router.get("/support/vendors", summary="Underpinning contracts per vendor")
def vendors(*, request: Request, session: Db) -> dict[str, Any]:
    """Time pending on each vendor against its target, and its breaches."""
    return {"vendors": sla.vendor_report(session, _support(request), _now(request))}


@router.get("/support/analytics", summary="Support analytics")
def analytics(
    *,
    request: Request,
    session: Db,
    weeks: Annotated[int, Query(ge=1, le=104)] = 12,
    release: str | None = None,
) -> dict[str, Any]:
    """Weekly SLA compliance with its interval, backlog by category, Kaplan-Meier time to
    resolve per opening week, a 14-day volume forecast, and (with ``release``) the
    tickets-per-1,000-devices spike check for that release."""
    return support_analytics.report(session, _now(request), weeks=weeks, release=release)


@router.get("/status", summary="Service status page")
def status(*, request: Request, session: Db) -> dict[str, Any]:
    """Each component's SLO, error budget, alerts and availability per day over 90 days."""
    return slo.status_page(session, _support(request), _now(request))
