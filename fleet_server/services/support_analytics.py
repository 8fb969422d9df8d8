"""Support analytics over stored tickets: loads what the pure functions in
:mod:`fleet_server.analytics.support` need and shapes one report.

SLA compliance per week counts tickets closed (resolved or closed) in that week whose
resolution target was met: by the last SLA evaluation for native tickets, by the source
helpdesk's own flag for imported ones. The release spike compares tickets linked to
devices now on ``release`` against tickets linked to the other active devices.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.support import (
    DAY,
    WEEK,
    Closed,
    backlog,
    forecast_daily,
    km_by_cohort,
    release_spike,
    weekly_compliance,
)
from fleet_server.db.models import Device
from fleet_server.db.ticket_models import Ticket, TicketLink, TicketSla
from fleet_server.domain.tickets import LinkKind


def _spike(session: Session, since: float, release: str) -> dict[str, Any]:
    devices = dict(
        session.execute(
            select(Device.software_version == release, func.count())
            .where(Device.status == "active")
            .group_by(Device.software_version == release)
        ).all()
    )
    linked = session.execute(
        select(Device.software_version == release, func.count(func.distinct(Ticket.id)))
        .select_from(TicketLink)
        .join(Ticket, Ticket.id == TicketLink.ticket_id)
        .join(Device, Device.device_id == TicketLink.ref)
        .where(
            TicketLink.kind == LinkKind.DEVICE.value,
            Ticket.created_at >= since,
            Device.status == "active",
        )
        .group_by(Device.software_version == release)
    ).all()
    tickets = {bool(k): int(n) for k, n in linked}
    counts = {bool(k): int(n) for k, n in devices.items()}
    try:
        return {
            "release": release,
            **release_spike(
                (tickets.get(True, 0), counts.get(True, 0)),
                (tickets.get(False, 0), counts.get(False, 0)),
            ),
        }
    except AnalyticsInputError as exc:
        return {"release": release, "error": str(exc)}


def report(
    session: Session, now: float, *, weeks: int = 12, release: str | None = None
) -> dict[str, Any]:
    """Compliance per week, backlog per day by category, Kaplan-Meier per opening week,
    a 14-day forecast and (with ``release``) the spike check, over the last ``weeks``."""
    since = now - weeks * WEEK
    rows = session.execute(
        select(
            Ticket.id,
            Ticket.created_at,
            Ticket.resolved_at,
            Ticket.closed_at,
            Ticket.category,
            Ticket.made_sla,
            Ticket.state,
        ).where((Ticket.created_at >= since) | Ticket.resolved_at.is_(None))
    ).all()
    met_by_sla = (
        dict(
            session.execute(
                select(TicketSla.ticket_id, TicketSla.breached).where(
                    TicketSla.target == "resolution", TicketSla.ticket_id.in_([r[0] for r in rows])
                )
            ).all()
        )
        if rows
        else {}
    )
    closed: list[Closed] = []
    spans: list[tuple[float, float | None, str]] = []
    for tid, created, resolved, closed_at, cat, made_sla, state in rows:
        done = resolved if resolved is not None else closed_at
        if state == "cancelled":
            continue
        spans.append((created, done, cat))
        if done is not None and done >= since:
            met = made_sla if made_sla is not None else not met_by_sla.get(tid, False)
            closed.append(Closed(done, bool(met)))
    out: dict[str, Any] = {"generated_at": now, "weeks": weeks}
    out["compliance"] = weekly_compliance(closed)
    out["backlog"] = backlog(spans, max(since, now - 90 * DAY), now)
    window = [(o, d) for o, d, _ in spans if o >= since]
    out["time_to_resolve"] = km_by_cohort(window, now) if window else {}
    days = int((now - since) // DAY)
    counts = [0] * days
    for o, _, _ in spans:
        i = int((o - since) // DAY)
        if 0 <= i < days:
            counts[i] += 1
    try:
        first = datetime.fromtimestamp(since, UTC).weekday()
        out["forecast"] = forecast_daily(counts, first)
    except AnalyticsInputError as exc:
        out["forecast"] = {"error": str(exc)}
    if release:
        out["release_spike"] = _spike(session, since, release)
    return out
