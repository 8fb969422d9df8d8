"""Tickets opened by rule: an open alarm at or above a configured severity, a new
warranty claim, or a new critical exposure event (an advisory newly reaching devices)
opens one ticket linked to it (and to its device, or to the advisory).

The rule runs as a job (:func:`run_ticket_rules`) rather than inside ingest or the claim
service, so neither path slows down or fails because of support; an object that already
has a ticket link is skipped, so the rule is idempotent.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings, SupportSettings
from fleet_server.db.models import Alarm, Device, WarrantyClaim
from fleet_server.db.sbom_models import AdvisoryRow, ExposureEvent
from fleet_server.db.ticket_models import TicketLink
from fleet_server.domain.alarms import severity_rank
from fleet_server.domain.tickets import Category, LinkKind
from fleet_server.services.audit import SYSTEM
from fleet_server.services.tickets import NewTicket, open_ticket

LOOKBACK_S = 7 * 86400.0
"""Objects older than this when the rule is first switched on are left alone."""
_URGENCY = {"critical": 1, "major": 1, "minor": 2, "warning": 3, "info": 3}


def _linked(session: Session, kind: LinkKind, refs: list[str]) -> set[str]:
    if not refs:
        return set()
    return set(
        session.execute(
            select(TicketLink.ref).where(TicketLink.kind == kind.value, TicketLink.ref.in_(refs))
        ).scalars()
    )


def open_for_alarms(session: Session, settings: SupportSettings, now: float) -> list[str]:
    """One ticket per open alarm at or above ``alarm_ticket_min_severity`` without one."""
    floor = settings.alarm_ticket_min_severity
    if not floor:
        return []
    rows = session.execute(
        select(Alarm, Device.device_id)
        .join(Device, Device.id == Alarm.device_key)
        .where(Alarm.state == "open", Alarm.raised_at >= now - LOOKBACK_S)
        .order_by(Alarm.id)
    ).all()
    rows = [(a, d) for a, d in rows if severity_rank(a.severity) >= severity_rank(floor)]
    seen = _linked(session, LinkKind.ALARM, [str(a.id) for a, _ in rows])
    opened = []
    for alarm, device_id in rows:
        if str(alarm.id) in seen:
            continue
        t = open_ticket(
            session,
            SYSTEM,
            NewTicket(
                title=f"{alarm.severity} alarm {alarm.code} on {device_id}",
                category=Category.DEVICE_HARDWARE.value,
                requester="fleet-server",
                requester_kind="internal",
                impact=2,
                urgency=_URGENCY.get(alarm.severity, 2),
                description=alarm.message,
                links=[(LinkKind.ALARM.value, str(alarm.id)), (LinkKind.DEVICE.value, device_id)],
            ),
            settings,
            now=now,
            source="rule",
        )
        opened.append(t.number)
    return opened


def open_for_claims(session: Session, settings: SupportSettings, now: float) -> list[str]:
    """One ticket per warranty claim without one (when ``claim_tickets`` is on)."""
    if not settings.claim_tickets:
        return []
    claims = session.execute(
        select(WarrantyClaim, Device.device_id)
        .outerjoin(Device, Device.id == WarrantyClaim.device_key)
        .where(WarrantyClaim.created_at >= now - LOOKBACK_S)
        .order_by(WarrantyClaim.id)
    ).all()
    seen = _linked(session, LinkKind.CLAIM, [str(c.id) for c, _ in claims])
    opened = []
    for claim, device_id in claims:
        if str(claim.id) in seen:
            continue
        links = [(LinkKind.CLAIM.value, str(claim.id))]
        if device_id:
            links.append((LinkKind.DEVICE.value, device_id))
        t = open_ticket(
            session,
            SYSTEM,
            NewTicket(
                title=f"warranty claim {claim.id}: {claim.failure_mode} on {claim.device_ref}",
                category=Category.DEVICE_HARDWARE.value,
                requester=claim.created_by,
                requester_kind="customer",
                impact=3,
                urgency=2,
                description=claim.description,
                links=links,
            ),
            settings,
            now=now,
            source="rule",
        )
        opened.append(t.number)
    return opened


def open_for_exposures(session: Session, settings: SupportSettings, now: float) -> list[str]:
    """One security-incident ticket per advisory with an open critical exposure event and
    no ticket yet (when ``exposure_tickets`` is on), linked to the advisory."""
    if not settings.exposure_tickets:
        return []
    rows = session.execute(
        select(ExposureEvent, AdvisoryRow.summary)
        .join(AdvisoryRow, AdvisoryRow.id == ExposureEvent.advisory_id)
        .where(ExposureEvent.state == "open", ExposureEvent.raised_at >= now - LOOKBACK_S)
        .order_by(ExposureEvent.id)
    ).all()
    seen = _linked(session, LinkKind.ADVISORY, [e.advisory_id for e, _ in rows])
    opened = []
    for event, summary in rows:
        if event.advisory_id in seen:
            continue
        seen.add(event.advisory_id)
        bundles = ", ".join(event.bundles or [])
        t = open_ticket(
            session,
            SYSTEM,
            NewTicket(
                title=f"{event.severity} advisory {event.advisory_id} exposes "
                f"{event.exposed_devices} devices",
                category=Category.SECURITY_INCIDENT.value,
                requester="fleet-server",
                requester_kind="internal",
                impact=1,
                urgency=1,
                description=f"{summary or ''}\naffected releases: {bundles}".strip(),
                links=[(LinkKind.ADVISORY.value, event.advisory_id)],
            ),
            settings,
            now=now,
            source="rule",
        )
        opened.append(t.number)
    return opened


def run_ticket_rules(sessions: sessionmaker[Session], settings: Settings, now: float) -> list[str]:
    """The rules job: open the tickets alarms, claims and exposures call for (one
    transaction); returns the new ticket numbers."""
    with sessions() as session, session.begin():
        return (
            open_for_alarms(session, settings.support, now)
            + open_for_claims(session, settings.support, now)
            + open_for_exposures(session, settings.support, now)
        )
