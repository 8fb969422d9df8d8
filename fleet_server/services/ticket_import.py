"""Import a helpdesk's history: a ServiceNow-style incident event log becomes tickets with
their rebuilt timelines, all rows or none.

The file is parsed completely first (:func:`fleet_server.analytics.servicenow.parse_log`,
the parser ``fleetctl analytics sla`` uses too); any problem refuses the whole import with
every problem by line and column (``invalid_import``, 422), and an incident number that
already exists refuses it as a ``conflict``. Only then are tickets and events written, in
one transaction, with one audit entry for the import.

Every log row becomes one ticket event: ``created`` for the first, ``state`` where the
state changed (with a ``reopened`` step when a resolved incident became active again)
and ``update`` otherwise, so the SLA clock can replay imported tickets like native ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleet_server.analytics.servicenow import EMPTY, Incident, LogFormatError, parse_log
from fleet_server.db.ticket_models import Ticket, TicketEvent
from fleet_server.domain.tickets import Category, TicketState
from fleet_server.errors import ConflictError, InvalidInputError
from fleet_server.services import audit
from fleet_server.services.audit import Actor

FORMATS = ("servicenow",)
CHUNK = 5000
"""Tickets inserted per statement (their events follow in the same transaction)."""


def _level(raw: str | None) -> int:
    """``2 - Medium`` -> 2 (3 when the log has none or something else)."""
    head = (raw or "").split("-")[0].strip()
    return int(head) if head in ("1", "2", "3") else 3


def _priority(raw: str | None) -> int:
    head = (raw or "").split("-")[0].strip()
    return int(head) if head.isdigit() and 1 <= int(head) <= 5 else 3


def _ticket_row(inc: Incident, category: str, actor: Actor, now: float) -> dict[str, Any]:
    timeline = inc.timeline()
    state = timeline[-1][1] if timeline else TicketState.NEW.value
    raw_cat = inc.value("category")
    return {
        "number": inc.number,
        "title": f"{inc.number} ({raw_cat or 'no category'})",
        "description": "",
        "requester": inc.value("caller_id") or "imported",
        "requester_kind": "customer",
        "customer": None,
        "category": raw_cat if raw_cat in {c.value for c in Category} else category,
        "impact": _level(inc.value("impact")),
        "urgency": _level(inc.value("urgency")),
        "priority": _priority(inc.value("priority")),
        "assignment_group": inc.value("assignment_group"),
        "assignee": inc.value("assigned_to"),
        "vendor": inc.value("vendor"),
        "state": state,
        "source": "import",
        "policy": None,
        "created_at": inc.opened_at,
        "created_by": actor.label,
        "updated_at": inc.last.at,
        "first_response_at": None,
        "resolved_at": inc.resolved_at,
        "closed_at": inc.closed_at,
        "made_sla": inc.made_sla,
    }


def _events(inc: Incident, ticket_id: int) -> Iterable[dict[str, Any]]:
    first = inc.rows[0]
    yield {
        "ticket_id": ticket_id,
        "at": inc.opened_at,
        "actor": first.fields.get("opened_by") or "import",
        "kind": "created",
        "data": {
            "source": "servicenow",
            "line": first.line,
            "category": first.fields.get("category"),
        },
    }
    current: str | None = TicketState.NEW.value
    for row in inc.rows:
        actor = row.fields.get("sys_updated_by") or "import"
        actor = "import" if actor in EMPTY else actor
        base = {"ticket_id": ticket_id, "at": row.at, "actor": actor}
        data = {"line": row.line, "incident_state": row.raw_state, "made_sla": row.made_sla}
        if row.state is not None and row.state != current:
            if current in ("resolved", "closed") and row.state not in ("resolved", "closed"):
                yield {
                    **base,
                    "kind": "state",
                    "data": {**data, "from": current, "to": TicketState.REOPENED.value},
                }
                current = TicketState.REOPENED.value
            yield {**base, "kind": "state", "data": {**data, "from": current, "to": row.state}}
            current = row.state
        else:
            yield {**base, "kind": "update", "data": data}


def _insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert event rows in the session's transaction: PostgreSQL's COPY (an order of
    magnitude faster for a big history), a bulk INSERT elsewhere."""
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        session.execute(insert(TicketEvent), rows)
        return
    raw = conn.connection.driver_connection
    cols = "ticket_id, at, actor, kind, data"
    with raw.cursor() as cur, cur.copy(f"COPY ticket_events ({cols}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row((r["ticket_id"], r["at"], r["actor"], r["kind"], json.dumps(r["data"])))


def import_log(
    session: Session,
    actor: Actor,
    text: str,
    *,
    fmt: str = "servicenow",
    date_format: str | None = None,
    category: str = Category.DEVICE_SOFTWARE.value,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Parse and import the whole log in one transaction (committed); returns counts."""
    if fmt not in FORMATS:
        raise InvalidInputError("invalid_import", f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if category not in {c.value for c in Category}:
        raise InvalidInputError("invalid_import", f"category {category!r} is not a category")
    try:
        incidents = parse_log(text, date_format=date_format)
    except LogFormatError as exc:
        raise InvalidInputError(
            "invalid_import",
            str(exc),
            [{"line": ln, "column": col, "message": msg} for ln, col, msg in exc.errors],
        ) from None
    if not incidents:
        raise InvalidInputError("invalid_import", "the log has no incidents")
    numbers = [i.number for i in incidents]
    taken: list[str] = []
    for i in range(0, len(numbers), CHUNK):
        taken += (
            session.execute(select(Ticket.number).where(Ticket.number.in_(numbers[i : i + CHUNK])))
            .scalars()
            .all()
        )
    if taken:
        raise ConflictError(
            "conflict",
            f"{len(taken)} incident(s) already imported, e.g. {', '.join(sorted(taken)[:5])}",
            {"numbers": sorted(taken)[:100]},
        )
    events = 0
    for i in range(0, len(incidents), CHUNK):
        chunk = incidents[i : i + CHUNK]
        ids = (
            session.execute(
                insert(Ticket).returning(Ticket.id, sort_by_parameter_order=True),
                [_ticket_row(inc, category, actor, now) for inc in chunk],
            )
            .scalars()
            .all()
        )
        rows = [ev for inc, tid in zip(chunk, ids, strict=True) for ev in _events(inc, tid)]
        _insert_events(session, rows)
        events += len(rows)
    summary = {
        "format": fmt,
        "tickets": len(incidents),
        "events": events,
        "closed": sum(1 for i in incidents if i.closed),
    }
    audit.record(
        session,
        actor,
        "ticket.import",
        "ticket",
        None,
        now=now,
        after=summary,
        request_id=request_id,
    )
    session.commit()
    return summary
