"""Support tickets: create, change, move along the lifecycle, comment, link; list and show.

Every change is a :class:`~fleet_server.db.ticket_models.TicketEvent` (who, when, what)
and an audit entry, written in the change's transaction. The functions the API calls
commit and return the API's view; :func:`open_ticket` does not commit (rules and the SLO
alerting call it inside their own transaction).

Refusals: ``invalid_ticket`` (422), ``not_found`` (404), ``conflict`` (409, with the
allowed next states for an illegal move).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from fleet_server.config import SupportSettings
from fleet_server.db.models import Alarm, Device, RecallCampaign, Rma, WarrantyClaim
from fleet_server.db.rollout_models import Rollout
from fleet_server.db.sbom_models import AdvisoryRow
from fleet_server.db.ticket_models import Ticket, TicketComment, TicketEvent, TicketLink, TicketSla
from fleet_server.domain.sla_clock import breaching_label
from fleet_server.domain.tickets import (
    OPEN_STATES,
    TICKET,
    LinkKind,
    TicketState,
    check_matrix,
    parse_category,
    parse_link_kind,
    priority_of,
)
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.webhooks import notify

EDITABLE = (
    "title",
    "description",
    "impact",
    "urgency",
    "category",
    "assignment_group",
    "assignee",
    "vendor",
    "customer",
)
"""Fields ``PATCH`` may change (state moves through :func:`transition`)."""


@dataclass(frozen=True)
class NewTicket:
    """What a new ticket says."""

    title: str
    category: str
    requester: str
    impact: int = 3
    urgency: int = 3
    description: str = ""
    requester_kind: str = "customer"
    customer: str | None = None
    assignment_group: str | None = None
    assignee: str | None = None
    vendor: str | None = None
    links: list[tuple[str, str]] = field(default_factory=list)


def ticket_view(t: Ticket) -> dict[str, Any]:
    """The ticket's own fields as the API shows them (epoch seconds)."""
    return {c.key: getattr(t, c.key) for c in Ticket.__table__.columns if c.key != "id"}


def get_ticket(session: Session, number: str) -> Ticket:
    """A ticket by number, or ``not_found``."""
    t = session.execute(select(Ticket).where(Ticket.number == number)).scalar_one_or_none()
    if t is None:
        raise NotFoundError("not_found", f"ticket {number!r} does not exist")
    return t


def record_event(
    session: Session,
    t: Ticket,
    actor: Actor,
    kind: str,
    data: dict[str, Any],
    *,
    now: float,
    request_id: str | None = None,
    audited: bool = True,
) -> TicketEvent:
    """Add one ticket event (and, for operator changes, its audit entry) to the caller's
    transaction."""
    ev = TicketEvent(ticket_id=t.id, at=now, actor=actor.label, kind=kind, data=data)
    session.add(ev)
    t.updated_at = max(t.updated_at, now)
    if audited:
        audit.record(
            session,
            actor,
            f"ticket.{kind}",
            "ticket",
            t.number,
            now=now,
            after=data,
            request_id=request_id,
        )
    return ev


def _check_ref(session: Session, kind: LinkKind, ref: str) -> str:
    """``ref`` when the linked object exists (a clear 404 otherwise)."""
    found: object | None
    if kind is LinkKind.DEVICE:
        found = session.execute(select(Device.id).where(Device.device_id == ref)).first()
    elif kind is LinkKind.ROLLOUT:
        found = session.execute(select(Rollout.id).where(Rollout.id == ref)).first()
    elif kind is LinkKind.RECALL:
        found = session.get(RecallCampaign, ref)
    elif kind is LinkKind.ADVISORY:
        found = session.get(AdvisoryRow, ref)
    else:
        model = {LinkKind.ALARM: Alarm, LinkKind.CLAIM: WarrantyClaim, LinkKind.RMA: Rma}[kind]
        found = session.get(model, int(ref)) if ref.isdigit() and len(ref) < 16 else None
    if not found:
        raise NotFoundError("not_found", f"{kind.value} {ref!r} does not exist")
    return ref


def require_device(session: Session, device_id: str) -> None:
    """``not_found`` unless the device is registered."""
    _check_ref(session, LinkKind.DEVICE, device_id)


def _check_new(n: NewTicket) -> None:
    if not n.title.strip() or len(n.title) > 300:
        raise InvalidInputError("invalid_ticket", "title: 1 to 300 characters")
    if not n.requester.strip():
        raise InvalidInputError("invalid_ticket", "requester: required")
    if n.requester_kind not in ("customer", "internal"):
        raise InvalidInputError("invalid_ticket", "requester_kind: customer or internal")
    parse_category(n.category)


def open_ticket(
    session: Session,
    actor: Actor,
    n: NewTicket,
    settings: SupportSettings,
    *,
    now: float,
    source: str = "api",
    request_id: str | None = None,
) -> Ticket:
    """Create a ticket with its ``created`` event, links and audit entry in the caller's
    transaction (not committed); queues ``ticket.created`` webhooks."""
    _check_new(n)
    matrix = check_matrix(settings.priority_matrix)
    priority = priority_of(n.impact, n.urgency, matrix)
    links = [(parse_link_kind(k), _check_ref(session, parse_link_kind(k), r)) for k, r in n.links]
    t = Ticket(
        number="tmp-" + uuid.uuid4().hex[:16],
        title=n.title.strip(),
        description=n.description,
        requester=n.requester.strip(),
        requester_kind=n.requester_kind,
        customer=n.customer,
        category=n.category,
        impact=n.impact,
        urgency=n.urgency,
        priority=priority,
        assignment_group=n.assignment_group,
        assignee=n.assignee,
        vendor=n.vendor,
        state=TICKET.initial.value,
        source=source,
        created_at=now,
        created_by=actor.label,
        updated_at=now,
    )
    session.add(t)
    session.flush()
    t.number = f"TKT-{t.id:06d}"
    record_event(session, t, actor, "created", {**ticket_view(t)}, now=now, request_id=request_id)
    for kind, ref in links:
        session.add(
            TicketLink(
                ticket_id=t.id, kind=kind.value, ref=ref, created_at=now, created_by=actor.label
            )
        )
        record_event(
            session, t, actor, "link", {"kind": kind.value, "ref": ref}, now=now, audited=False
        )
    notify(session, "ticket.created", _hook_payload(t), now=now)
    return t


def _hook_payload(t: Ticket) -> dict[str, Any]:
    return {
        "number": t.number,
        "title": t.title,
        "category": t.category,
        "priority": t.priority,
        "state": t.state,
        "created_at": t.created_at,
    }


def create_ticket(
    session: Session,
    actor: Actor,
    n: NewTicket,
    settings: SupportSettings,
    *,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Open a ticket (committed) and return its view."""
    t = open_ticket(session, actor, n, settings, now=now, request_id=request_id)
    session.commit()
    return ticket_view(t)


def update_ticket(
    session: Session,
    actor: Actor,
    number: str,
    changes: dict[str, Any],
    settings: SupportSettings,
    *,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Change editable fields (priority follows impact x urgency); one ``field`` event per
    call listing before and after; committed."""
    t = get_ticket(session, number)
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise InvalidInputError("invalid_ticket", f"cannot change {', '.join(unknown)}")
    required = [
        k
        for k in ("title", "description", "impact", "urgency", "category")
        if k in changes and changes[k] is None
    ]
    if required:
        raise InvalidInputError("invalid_ticket", f"{', '.join(required)}: cannot be empty")
    if "category" in changes:
        parse_category(str(changes["category"]))
    diff: dict[str, Any] = {}
    for key, value in changes.items():
        if getattr(t, key) != value:
            diff[key] = {"from": getattr(t, key), "to": value}
            setattr(t, key, value)
    new_priority = priority_of(t.impact, t.urgency, check_matrix(settings.priority_matrix))
    if new_priority != t.priority:
        diff["priority"] = {"from": t.priority, "to": new_priority}
        t.priority = new_priority
    if diff:
        record_event(session, t, actor, "field", diff, now=now, request_id=request_id)
    session.commit()
    return ticket_view(t)


def apply_state(
    session: Session,
    t: Ticket,
    actor: Actor,
    wanted: str,
    *,
    now: float,
    note: str = "",
    request_id: str | None = None,
) -> None:
    """Move ``t`` to ``wanted`` along the table with its ``state`` event (not committed)."""
    before = t.state
    t.state = TICKET.move_to(t.state, wanted).value
    if t.state == TicketState.RESOLVED:
        t.resolved_at = now
    elif t.state == TicketState.CLOSED:
        t.closed_at = now
    elif t.state == TicketState.REOPENED:
        t.resolved_at = t.closed_at = None
    record_event(
        session,
        t,
        actor,
        "state",
        {"from": before, "to": t.state, "note": note},
        now=now,
        request_id=request_id,
    )


def transition(
    session: Session,
    actor: Actor,
    number: str,
    wanted: str,
    *,
    now: float,
    note: str = "",
    request_id: str | None = None,
) -> dict[str, Any]:
    """Move a ticket to ``wanted`` (409 with the allowed next states otherwise); committed."""
    t = get_ticket(session, number)
    apply_state(session, t, actor, wanted, now=now, note=note, request_id=request_id)
    session.commit()
    return ticket_view(t)


def add_comment(
    session: Session,
    actor: Actor,
    number: str,
    body: str,
    *,
    public: bool,
    author_kind: str = "agent",
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Add a public or internal comment; an agent's public comment is a *response* (it
    stops the first-response clock and starts a next-update cycle). Committed."""
    t = get_ticket(session, number)
    if not body.strip():
        raise InvalidInputError("invalid_ticket", "comment body: required")
    if author_kind not in ("agent", "requester"):
        raise InvalidInputError("invalid_ticket", "author_kind: agent or requester")
    if t.state in (TicketState.CLOSED, TicketState.CANCELLED):
        raise ConflictError("conflict", f"ticket {number} is {t.state}; reopen it first")
    c = TicketComment(
        ticket_id=t.id,
        at=now,
        author=actor.label,
        author_kind=author_kind,
        public=public,
        body=body,
    )
    session.add(c)
    session.flush()
    kind = "response" if public and author_kind == "agent" else "comment"
    if kind == "response" and t.first_response_at is None:
        t.first_response_at = now
    record_event(
        session,
        t,
        actor,
        kind,
        {"comment_id": c.id, "public": public, "author_kind": author_kind},
        now=now,
        request_id=request_id,
    )
    session.commit()
    return comment_view(c)


def comment_view(c: TicketComment) -> dict[str, Any]:
    """A comment as the API shows it."""
    return {
        "id": c.id,
        "at": c.at,
        "author": c.author,
        "author_kind": c.author_kind,
        "public": c.public,
        "body": c.body,
    }


def link(
    session: Session,
    actor: Actor,
    number: str,
    kind: str,
    ref: str,
    *,
    now: float,
    remove: bool = False,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Link (or unlink) a device, alarm, claim, RMA, recall or rollout; committed."""
    t = get_ticket(session, number)
    k = parse_link_kind(kind)
    existing = session.execute(
        select(TicketLink).where(
            TicketLink.ticket_id == t.id, TicketLink.kind == k.value, TicketLink.ref == ref
        )
    ).scalar_one_or_none()
    if remove:
        if existing is None:
            raise NotFoundError("not_found", f"{number} has no link to {k.value} {ref}")
        session.delete(existing)
    elif existing is None:
        _check_ref(session, k, ref)
        session.add(
            TicketLink(
                ticket_id=t.id, kind=k.value, ref=ref, created_at=now, created_by=actor.label
            )
        )
    else:
        raise ConflictError("conflict", f"{number} already links {k.value} {ref}")
    record_event(
        session,
        t,
        actor,
        "unlink" if remove else "link",
        {"kind": k.value, "ref": ref},
        now=now,
        request_id=request_id,
    )
    session.commit()
    return {"number": number, "links": links_of(session, t.id)}


def links_of(session: Session, ticket_id: int) -> list[dict[str, Any]]:
    """A ticket's links, oldest first."""
    rows = session.execute(
        select(TicketLink).where(TicketLink.ticket_id == ticket_id).order_by(TicketLink.id)
    ).scalars()
    return [
        {"kind": r.kind, "ref": r.ref, "created_at": r.created_at, "created_by": r.created_by}
        for r in rows
    ]


def show_ticket(session: Session, number: str, *, internal: bool = True) -> dict[str, Any]:
    """A ticket with its comments (internal ones only when ``internal``), links, events
    and the ids of linked devices (whose timelines the caller can add)."""
    t = get_ticket(session, number)
    comments = session.execute(
        select(TicketComment).where(TicketComment.ticket_id == t.id).order_by(TicketComment.id)
    ).scalars()
    events = session.execute(
        select(TicketEvent)
        .where(TicketEvent.ticket_id == t.id)
        .order_by(TicketEvent.at, TicketEvent.id)
    ).scalars()
    return {
        **ticket_view(t),
        "allowed_next": [str(s) for s in TICKET.next_states(t.state)],
        "comments": [comment_view(c) for c in comments if internal or c.public],
        "links": links_of(session, t.id),
        "events": [{"at": e.at, "actor": e.actor, "kind": e.kind, "data": e.data} for e in events],
    }


@dataclass(frozen=True)
class TicketFilter:
    """Which tickets to list (None = any); ``open_only`` keeps the backlog."""

    state: str | None = None
    category: str | None = None
    priority: int | None = None
    assignee: str | None = None
    device_id: str | None = None
    open_only: bool = False


def tickets_query(f: TicketFilter) -> Select[tuple[Ticket]]:
    """Tickets matching ``f``, newest first."""
    q = select(Ticket)
    if f.state:
        q = q.where(Ticket.state == f.state)
    if f.open_only:
        q = q.where(Ticket.state.in_([s.value for s in OPEN_STATES]))
    if f.category:
        q = q.where(Ticket.category == f.category)
    if f.priority is not None:
        q = q.where(Ticket.priority == f.priority)
    if f.assignee:
        q = q.where(Ticket.assignee == f.assignee)
    if f.device_id:
        linked = select(TicketLink.ticket_id).where(
            TicketLink.kind == LinkKind.DEVICE.value, TicketLink.ref == f.device_id
        )
        q = q.where(Ticket.id.in_(linked))
    return q.order_by(Ticket.id.desc())


def next_due(session: Session, ticket_ids: list[int]) -> dict[int, TicketSla]:
    """Per ticket, its running SLA target due soonest (what lists show)."""
    out: dict[int, TicketSla] = {}
    if not ticket_ids:
        return out
    rows = session.execute(
        select(TicketSla).where(TicketSla.ticket_id.in_(ticket_ids), TicketSla.state == "running")
    ).scalars()
    for r in rows:
        best = out.get(r.ticket_id)
        if r.due_at is not None and (best is None or (best.due_at or 0) > r.due_at):
            out[r.ticket_id] = r
    return out


def list_tickets(
    session: Session, f: TicketFilter, params: PageParams, *, now: float
) -> Page[dict[str, Any]]:
    """One page of tickets, newest first, each with its soonest SLA deadline and the
    ``breaching in ...`` label."""
    page = fetch_page(session, tickets_query(f), params, scalars=True)
    due = next_due(session, [t.id for t in page.items])

    def view(t: Ticket) -> dict[str, Any]:
        d = due.get(t.id)
        return {
            **ticket_view(t),
            "sla_target": d.target if d else None,
            "sla_due_at": d.due_at if d else None,
            "sla": breaching_label(d.due_at if d else None, now),
        }

    return page.map(view)


def count_open(session: Session) -> dict[str, int]:
    """Open tickets per category (the backlog gauge)."""
    rows = session.execute(
        select(Ticket.category, func.count())
        .where(Ticket.state.in_([s.value for s in OPEN_STATES]))
        .group_by(Ticket.category)
    ).all()
    return {c: int(n) for c, n in rows}


def delete_links_to(session: Session, kind: str, ref: str) -> int:
    """Remove every link to an object that no longer exists (not committed)."""
    return session.execute(
        delete(TicketLink).where(TicketLink.kind == kind, TicketLink.ref == ref)
    ).rowcount


def ticket_counts(session: Session) -> dict[str, dict[str, int]]:
    """Tickets per state, and open tickets per priority (the list page's counters)."""
    states = session.execute(select(Ticket.state, func.count()).group_by(Ticket.state)).all()
    priorities = session.execute(
        select(Ticket.priority, func.count())
        .where(Ticket.state.in_([s.value for s in OPEN_STATES]))
        .group_by(Ticket.priority)
    ).all()
    return {
        "state": {str(s): int(n) for s, n in states},
        "priority": {str(p): int(n) for p, n in sorted(priorities)},
    }
