"""SLA clocks of stored tickets: the configuration (policies, calendars, vendors), the
tick that turns 50 % / 75 % / breach crossings into ticket events and webhooks, the
"breaching within" list, the per-vendor underpinning-contract report, and the gauges of
``/metrics``.

The clock itself is pure (:func:`fleet_server.domain.sla_clock.evaluate`); this module
loads each ticket's history, evaluates it, caches the result in ``ticket_sla`` (indexed by
``due_at`` for the list) and records what it has reported so a crossing is reported once
per cycle. Tests call :func:`tick` with the time they choose.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings, SupportSettings
from fleet_server.db.ticket_models import Ticket, TicketEvent, TicketSla
from fleet_server.db.webhook_models import WebhookSubscription
from fleet_server.domain.sla_calendar import ALWAYS, Calendar, calendar_from_config
from fleet_server.domain.sla_clock import (
    DEFAULT_PAUSE,
    Clock,
    HistoryEvent,
    SlaPolicy,
    Target,
    breaching_label,
    evaluate,
    new_crossings,
    select_policy,
    vendor_clock,
)
from fleet_server.domain.tickets import OPEN_STATES, TicketState
from fleet_server.errors import InvalidInputError
from fleet_server.services.audit import SYSTEM
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.tickets import get_ticket
from fleet_server.services.webhooks import enqueue

H = 3600.0
WARNING_EVENT = "ticket.sla_warning"
BREACH_EVENT = "ticket.sla_breached"


@dataclass(frozen=True)
class Vendor:
    """An underpinning contract: time pending on the vendor against ``target_s``."""

    name: str
    target_s: float
    calendar: str = "24x7"


@dataclass(frozen=True)
class SupportConfig:
    """The parsed ``[support]`` settings."""

    calendars: dict[str, Calendar]
    policies: list[SlaPolicy]
    vendors: dict[str, Vendor] = field(default_factory=dict)

    def calendar(self, name: str) -> Calendar:
        """The calendar called ``name`` (``24x7`` always exists)."""
        return self.calendars[name]


def _policy(spec: dict[str, Any], calendars: dict[str, Calendar]) -> SlaPolicy:
    name = str(spec.get("name") or "")
    if not name:
        raise InvalidInputError("invalid_sla_policy", "every SLA policy needs a name")
    targets = {
        t: float(spec[f"{t.value}_h"]) * H for t in Target if spec.get(f"{t.value}_h") is not None
    }
    if not targets or any(v <= 0 for v in targets.values()):
        raise InvalidInputError("invalid_sla_policy", f"policy {name}: positive targets needed")
    cal = str(spec.get("calendar", "24x7"))
    if cal not in calendars:
        raise InvalidInputError("invalid_sla_policy", f"policy {name}: no calendar {cal!r}")
    pause = spec.get("pause_states")
    states = {s.value for s in TicketState}
    if pause is not None and not set(pause) <= states:
        raise InvalidInputError("invalid_sla_policy", f"policy {name}: unknown pause states")
    return SlaPolicy(
        name,
        targets,
        calendar=cal,
        priorities=frozenset(int(p) for p in spec.get("priorities", [])),
        categories=frozenset(spec.get("categories", [])),
        customers=frozenset(spec.get("customers", [])),
        pause_states=frozenset(pause) if pause is not None else DEFAULT_PAUSE,
        reset_on_reopen=bool(spec.get("reset_on_reopen", True)),
    )


_CACHE: dict[int, tuple[SupportSettings, SupportConfig]] = {}


def support_config(settings: SupportSettings) -> SupportConfig:
    """Parse (once per settings object) calendars, policies and vendors; a bad entry is
    an ``invalid_*`` error naming it."""
    hit = _CACHE.get(id(settings))
    if hit is not None and hit[0] is settings:
        return hit[1]
    calendars = {"24x7": ALWAYS}
    for name, spec in settings.calendars.items():
        calendars[name] = calendar_from_config(name, spec)
    policies = [_policy(p, calendars) for p in settings.policies]
    vendors = {}
    for name, spec in settings.vendors.items():
        cal = str(spec.get("calendar", "24x7"))
        if cal not in calendars or float(spec.get("target_h", 0)) <= 0:
            raise InvalidInputError("invalid_sla_policy", f"vendor {name}: target_h, calendar")
        vendors[name] = Vendor(name, float(spec["target_h"]) * H, cal)
    cfg = SupportConfig(calendars, policies, vendors)
    _CACHE[id(settings)] = (settings, cfg)
    return cfg


def histories(session: Session, ticket_ids: list[int]) -> dict[int, list[HistoryEvent]]:
    """The clock's view of each ticket's events (created, state, response), in order."""
    out: dict[int, list[HistoryEvent]] = defaultdict(list)
    if not ticket_ids:
        return out
    rows = session.execute(
        select(TicketEvent.ticket_id, TicketEvent.at, TicketEvent.kind, TicketEvent.data)
        .where(
            TicketEvent.ticket_id.in_(ticket_ids),
            TicketEvent.kind.in_(("created", "state", "response")),
        )
        .order_by(TicketEvent.ticket_id, TicketEvent.at, TicketEvent.id)
    )
    for tid, at, kind, data in rows:
        out[tid].append(HistoryEvent(at, kind, data.get("to") if kind == "state" else None))
    return out


def clocks_of(
    t: Ticket, history: list[HistoryEvent], cfg: SupportConfig, now: float
) -> tuple[SlaPolicy | None, dict[Target, Clock]]:
    """The policy covering ``t`` and its clocks at ``now``."""
    policy = select_policy(cfg.policies, t.priority, t.category, t.customer)
    if policy is None:
        return None, {}
    return policy, evaluate(history, policy, cfg.calendar(policy.calendar), now)


def ticket_sla(
    session: Session, number: str, settings: SupportSettings, now: float
) -> dict[str, Any]:
    """A ticket's policy, each target's clock (with the ``breaching in`` label) and, when
    it names a vendor with a contract, the vendor clock."""
    t = get_ticket(session, number)
    cfg = support_config(settings)
    hist = histories(session, [t.id])[t.id]
    policy, clocks = clocks_of(t, hist, cfg, now)
    out: dict[str, Any] = {
        "number": t.number,
        "policy": policy.name if policy else None,
        "calendar": policy.calendar if policy else None,
        "targets": [{**c.view(), "label": breaching_label(c.due_at, now)} for c in clocks.values()],
    }
    vendor = cfg.vendors.get(t.vendor or "")
    if vendor is not None:
        vc = vendor_clock(hist, vendor.target_s, cfg.calendar(vendor.calendar), now)
        out["vendor"] = {"name": vendor.name, **vc.view()}
    return out


@dataclass
class TickReport:
    """What one tick did."""

    evaluated: int = 0
    warnings: int = 0
    breaches: int = 0

    def __bool__(self) -> bool:
        return bool(self.warnings or self.breaches)


STALE_S = 86400.0
"""Crossings older than this when first seen (an imported history, a server that was
down for days) are recorded as reported without events or webhooks: news that old
helps nobody and would flood the receivers."""


@dataclass
class _Emitter:
    """Writes crossing events and queues their webhooks; the subscriptions are read once
    per batch."""

    session: Session
    now: float
    subs: list[WebhookSubscription]
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, t: Ticket, clock: Clock, policy: SlaPolicy, th: float, at: float) -> None:
        kind = "sla.breach" if th >= 1.0 else "sla.warning"
        data = {
            "target": clock.target.value,
            "policy": policy.name,
            "cycle": clock.cycle,
            "threshold": th,
            "crossed_at": at,
            "due_at": clock.due_at if th < 1.0 else at,
        }
        self.events.append(
            {"ticket_id": t.id, "at": self.now, "actor": SYSTEM.label, "kind": kind, "data": data}
        )
        t.updated_at = max(t.updated_at, self.now)
        event_type = BREACH_EVENT if th >= 1.0 else WARNING_EVENT
        payload = {
            **data,
            "number": t.number,
            "title": t.title,
            "priority": t.priority,
            "category": t.category,
        }
        for sub in self.subs:
            if event_type in sub.events:
                enqueue(self.session, sub, event_type, payload, now=self.now)


def _sla_row(
    ticket_id: int, policy: SlaPolicy, clock: Clock, reported: float, now: float
) -> dict[str, Any]:
    return {
        "ticket_id": ticket_id,
        "target": clock.target.value,
        "policy": policy.name,
        "cycle": clock.cycle,
        "state": clock.state,
        "target_s": clock.target_s,
        "elapsed_s": clock.elapsed_s,
        "due_at": clock.due_at,
        "breached": clock.breached,
        "breached_at": clock.breached_at,
        "reported": reported,
        "evaluated_at": now,
    }


def tick_tickets(
    session: Session, settings: SupportSettings, now: float, ticket_ids: list[int]
) -> TickReport:
    """Evaluate the given tickets at ``now``: refresh ``ticket_sla`` and emit each new
    crossing (at most :data:`STALE_S` old) as a ticket event and a webhook, in bulk
    (caller commits)."""
    cfg = support_config(settings)
    report = TickReport()
    tickets = session.execute(select(Ticket).where(Ticket.id.in_(ticket_ids))).scalars().all()
    hist = histories(session, ticket_ids)
    known: dict[tuple[int, str], tuple[int, int, float]] = {
        (tid, target): (rid, cycle, reported)
        for rid, tid, target, cycle, reported in session.execute(
            select(
                TicketSla.id,
                TicketSla.ticket_id,
                TicketSla.target,
                TicketSla.cycle,
                TicketSla.reported,
            ).where(TicketSla.ticket_id.in_(ticket_ids))
        )
    }
    wanted = (WARNING_EVENT, BREACH_EVENT)
    subs = [
        sub
        for sub in session.execute(
            select(WebhookSubscription).where(WebhookSubscription.enabled.is_(True))
        ).scalars()
        if set(wanted) & set(sub.events)
    ]
    out = _Emitter(session, now, subs)
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    renamed: dict[str, list[int]] = {}
    for t in tickets:
        policy, clocks = clocks_of(t, hist[t.id], cfg, now)
        report.evaluated += 1
        if policy is None:
            continue
        if t.policy != policy.name:
            renamed.setdefault(policy.name, []).append(t.id)
        for target, clock in clocks.items():
            rid, cycle, reported = known.get((t.id, target.value), (None, None, 0.0))
            fresh = new_crossings(clock, cycle, reported)
            for th, at in fresh:
                if at < now - STALE_S:
                    continue
                out.emit(t, clock, policy, th, at)
                if th >= 1.0:
                    report.breaches += 1
                else:
                    report.warnings += 1
            base = reported if cycle == clock.cycle else 0.0
            row = _sla_row(t.id, policy, clock, max([base, *(th for th, _ in fresh)]), now)
            if rid is None:
                inserts.append(row)
            else:
                updates.append({"id": rid, **row})
    with session.no_autoflush:
        if out.events:
            session.execute(insert(TicketEvent), out.events)
        if inserts:
            session.execute(insert(TicketSla), inserts)
        if updates:
            session.execute(update(TicketSla), updates)
        for name, ids in renamed.items():
            session.execute(
                update(Ticket)
                .where(Ticket.id.in_(ids))
                .values(policy=name)
                .execution_options(synchronize_session=False)
            )
    return report


def tick(
    sessions: sessionmaker[Session], settings: Settings, now: float, *, batch: int = 500
) -> TickReport:
    """The SLA job: every open ticket, and every ticket whose clocks were last seen
    running or paused (to settle them once it is resolved or cancelled), is evaluated in
    batches, each batch one transaction."""
    total = TickReport()
    unsettled = select(TicketSla.ticket_id).where(TicketSla.state.in_(("running", "paused")))
    with sessions() as session:
        ids = list(
            session.execute(
                select(Ticket.id)
                .where(Ticket.state.in_([s.value for s in OPEN_STATES]) | Ticket.id.in_(unsettled))
                .order_by(Ticket.id)
            ).scalars()
        )
    for i in range(0, len(ids), batch):
        with sessions() as session, session.begin():
            r = tick_tickets(session, settings.support, now, ids[i : i + batch])
        total.evaluated += r.evaluated
        total.warnings += r.warnings
        total.breaches += r.breaches
    return total


def breaching_within(
    session: Session, within_s: float, params: PageParams, *, now: float
) -> Page[dict[str, Any]]:
    """Running SLA targets that breach within ``within_s`` from ``now`` (as of the last
    tick), soonest first, with the ticket and the ``breaching in`` label."""
    q = (
        select(TicketSla, Ticket)
        .join(Ticket, Ticket.id == TicketSla.ticket_id)
        .where(
            TicketSla.state == "running",
            TicketSla.due_at.is_not(None),
            TicketSla.due_at <= now + within_s,
            TicketSla.due_at > now,
        )
        .order_by(TicketSla.due_at)
    )
    page = fetch_page(session, q, params)
    return page.map(
        lambda row: {
            "number": row[1].number,
            "title": row[1].title,
            "priority": row[1].priority,
            "state": row[1].state,
            "assignee": row[1].assignee,
            "target": row[0].target,
            "due_at": row[0].due_at,
            "sla": breaching_label(row[0].due_at, now),
        }
    )


def vendor_report(session: Session, settings: SupportSettings, now: float) -> list[dict[str, Any]]:
    """Per vendor with a contract: tickets that waited on it, hours pending, how many
    went past the vendor's target."""
    cfg = support_config(settings)
    out = []
    for vendor in cfg.vendors.values():
        ids = list(session.execute(select(Ticket.id).where(Ticket.vendor == vendor.name)).scalars())
        hist = histories(session, ids)
        cal = cfg.calendar(vendor.calendar)
        clocks = [vendor_clock(hist[i], vendor.target_s, cal, now) for i in ids]
        clocks = [c for c in clocks if c.cycles]
        out.append(
            {
                "vendor": vendor.name,
                "target_h": vendor.target_s / H,
                "tickets": len(clocks),
                "pending_h": round(sum(c.elapsed_s for c in clocks) / H, 2),
                "breached": sum(1 for c in clocks if c.breached),
                "waiting_now": sum(1 for c in clocks if c.state == "running"),
            }
        )
    return out


class SlaCollector(Collector):
    """``/metrics`` gauges: open tickets per category and priority, running SLA targets
    breaching within 1 h / 4 h, breached targets of open tickets."""

    def __init__(self, sessions: sessionmaker[Session], clock: Any) -> None:
        self.sessions = sessions
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Counts from the last tick's ``ticket_sla`` rows."""
        now = float(self.clock())
        try:
            with self.sessions() as session:
                open_rows = session.execute(
                    select(Ticket.category, Ticket.priority, func.count())
                    .where(Ticket.state.in_([s.value for s in OPEN_STATES]))
                    .group_by(Ticket.category, Ticket.priority)
                ).all()
                soon = {
                    h: session.execute(
                        select(func.count())
                        .select_from(TicketSla)
                        .where(
                            TicketSla.state == "running",
                            TicketSla.due_at > now,
                            TicketSla.due_at <= now + h * H,
                        )
                    ).scalar_one()
                    for h in (1, 4)
                }
                breached = session.execute(
                    select(TicketSla.target, func.count())
                    .join(Ticket, Ticket.id == TicketSla.ticket_id)
                    .where(
                        TicketSla.breached.is_(True),
                        Ticket.state.in_([s.value for s in OPEN_STATES]),
                    )
                    .group_by(TicketSla.target)
                ).all()
        except Exception:  # the scrape must not fail because the database did
            return
        g = GaugeMetricFamily("fleet_tickets_open", "Open tickets", labels=["category", "priority"])
        for cat, prio, n in open_rows:
            g.add_metric([cat, str(prio)], int(n))
        yield g
        s = GaugeMetricFamily(
            "fleet_sla_breaching_within", "Running SLA targets due within", labels=["hours"]
        )
        for h, n in soon.items():
            s.add_metric([str(h)], int(n))
        yield s
        b = GaugeMetricFamily(
            "fleet_sla_breached_open", "Breached targets of open tickets", labels=["target"]
        )
        for target, n in breached:
            b.add_metric([target], int(n))
        yield b
