"""Support: the ticket list (filters in the URL, counters linking to filtered lists, the
"breaching in" column), a ticket's page (fields, SLA clocks, events, comments, links,
state buttons and a comment form for technicians and up) and the read-only service
status page (availability per day over 90 days, SLO error budgets).

Internal comments are shown to technicians and up only, as ``GET /api/v1/tickets/{n}``
shows them; every change is audited under the signed-in user's name by the ticket service.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Form, Technician, Viewer
from fleet_server.console.web import PREFIX, page_params, pager, query_value, render
from fleet_server.domain.roles import Role
from fleet_server.domain.tickets import Category, TicketState
from fleet_server.errors import InvalidInputError
from fleet_server.services import sla, slo, tickets

router = APIRouter()


def _priority(request: Request) -> int | None:
    raw = query_value(request, "priority")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 2:
        raise InvalidInputError("validation_error", "priority: a number (1 is highest)")
    return int(raw)


@router.get("/tickets")
def ticket_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Tickets newest first, filtered by state, priority, category and assignee (or
    only the open ones), each with its soonest SLA deadline."""
    filt = tickets.TicketFilter(
        state=query_value(request, "state"),
        category=query_value(request, "category"),
        priority=_priority(request),
        assignee=query_value(request, "assignee"),
        open_only=query_value(request, "open") == "true",
    )
    now = context(request).clock()
    page = tickets.list_tickets(session, filt, page_params(request), now=now)
    return render(
        request,
        "tickets.html",
        page=page,
        pager=pager(page),
        filt=filt,
        counts=tickets.ticket_counts(session),
        states=[s.value for s in TicketState],
        categories=[c.value for c in Category],
    )


@router.get("/tickets/{number}")
def ticket_page(number: str, request: Request, session: Db, who: Viewer) -> HTMLResponse:
    """A ticket: fields, SLA targets, events, comments, links, and the actions."""
    internal = Role(who.user.role).allows(Role.TECHNICIAN)
    ctx = context(request)
    return render(
        request,
        "ticket.html",
        t=tickets.show_ticket(session, number, internal=internal),
        sla=sla.ticket_sla(session, number, ctx.settings.support, ctx.clock()),
        now=ctx.clock(),
    )


def _back(number: str) -> Response:
    return RedirectResponse(f"{PREFIX}/tickets/{quote(number, safe='')}", status_code=303)


@router.post("/tickets/{number}/transition")
def move_ticket(
    number: str, request: Request, session: Db, who: Technician, form: Form
) -> Response:
    """Move the ticket along its lifecycle (a 409 page names the allowed states)."""
    tickets.transition(
        session,
        who.actor,
        number,
        str(form.get("state", "")),
        now=context(request).clock(),
        note=str(form.get("note", ""))[:2000],
    )
    return _back(number)


@router.post("/tickets/{number}/comments")
def comment(number: str, request: Request, session: Db, who: Technician, form: Form) -> Response:
    """A public (a response to the requester) or internal comment."""
    body = str(form.get("body", ""))
    if len(body) > 20000:
        raise InvalidInputError("validation_error", "body: at most 20000 characters")
    tickets.add_comment(
        session,
        who.actor,
        number,
        body,
        public=form.get("public") == "true",
        now=context(request).clock(),
    )
    return _back(number)


@router.get("/status")
def status_page(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Each component's availability per day over 90 days and its error budget."""
    ctx = context(request)
    return render(
        request, "status.html", s=slo.status_page(session, ctx.settings.support, ctx.clock())
    )
