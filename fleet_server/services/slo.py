"""The fleet service measuring itself: per-minute records of API request outcomes and
latency, ingest freshness and command delivery; SLO status, burn-rate alerts that open a
cloud-infrastructure ticket and send ``slo.alert`` webhooks, and the status page.

* ``api_availability``: a request is good unless it answered 5xx;
* ``api_latency``: a request is good when answered within :data:`LATENCY_GOOD_S`;
* ``ingest_freshness``: a minute is good when the newest device contact is at most
  :data:`FRESH_S` old (or no device is online);
* ``command_delivery``: a command that finished in the minute is good unless it
  expired or failed.

The API's middleware counts requests in memory (:class:`RequestRecorder`) and writes each
finished minute once; the SLO job (:func:`run_slo_job`) records the other two and
evaluates every SLO (tests call both with the time they choose).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.config import Settings, SupportSettings
from fleet_server.db.models import CommandRecord, Device
from fleet_server.db.ticket_models import SloMinute, Ticket
from fleet_server.domain.slo import DAY_MIN, MINUTE, Series, Slo, daily_availability, evaluate_slo
from fleet_server.domain.tickets import OPEN_STATES, Category
from fleet_server.services.audit import SYSTEM
from fleet_server.services.tickets import NewTicket, open_ticket
from fleet_server.services.webhooks import notify

LATENCY_GOOD_S = 0.5
FRESH_S = 180.0
DEFAULT_SLOS = (
    Slo("api_availability", 0.999, 30, "API requests answered without a server error"),
    Slo("api_latency", 0.99, 30, f"API requests answered within {LATENCY_GOOD_S} s"),
    Slo("ingest_freshness", 0.99, 30, f"newest device contact at most {FRESH_S:g} s old"),
    Slo("command_delivery", 0.99, 30, "commands acknowledged before they expire"),
)
STATUS_DAYS = 90


def slos_of(settings: SupportSettings) -> list[Slo]:
    """The configured SLOs, or the built-in ones."""
    if not settings.slos:
        return list(DEFAULT_SLOS)
    return [
        Slo(
            str(s["component"]),
            float(s.get("objective", 0.999)),
            float(s.get("window_days", 30)),
            str(s.get("description", "")),
        )
        for s in settings.slos
    ]


def add_minutes(session: Session, counts: dict[tuple[str, int], list[int]]) -> None:
    """Add ``(component, minute) -> [good, total]`` to the stored minutes (caller
    commits; rows another process wrote for the same minute are added to)."""
    if not counts:
        return
    comps = {c for c, _ in counts}
    mins = {m for _, m in counts}
    existing = {
        (r.component, r.minute): r
        for r in session.execute(
            select(SloMinute).where(SloMinute.component.in_(comps), SloMinute.minute.in_(mins))
        ).scalars()
    }
    for (comp, minute), (good, total) in counts.items():
        row = existing.get((comp, minute))
        if row is None:
            session.add(SloMinute(component=comp, minute=minute, good=good, total=total))
        else:
            row.good += good
            row.total += total


class RequestRecorder:
    """In-memory per-minute counts of API outcomes; :meth:`flush_due` writes the minutes
    that are over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])

    def observe(self, status: int, seconds: float, now: float) -> bool:
        """Count one request; True when an earlier minute is waiting to be written."""
        minute = int(now // MINUTE)
        with self._lock:
            for comp, good in (
                ("api_availability", status < 500),
                ("api_latency", seconds <= LATENCY_GOOD_S),
            ):
                c = self._counts[(comp, minute)]
                c[0] += int(good)
                c[1] += 1
            return any(m < minute for _, m in self._counts)

    def flush_due(self, sessions: sessionmaker[Session], now: float) -> int:
        """Write (and forget) every minute before the current one; returns how many."""
        minute = int(now // MINUTE)
        with self._lock:
            due = {k: v for k, v in self._counts.items() if k[1] < minute}
            for k in due:
                del self._counts[k]
        if not due:
            return 0
        for _attempt in range(2):
            try:
                with sessions() as session, session.begin():
                    add_minutes(session, due)
                return len(due)
            except IntegrityError:  # another replica inserted the same minute first
                continue
        return 0


def record_background(session: Session, now: float) -> None:
    """Record the minute before ``now`` for ingest freshness and command delivery, once
    (a minute already recorded is left as it is)."""
    minute = int(now // MINUTE) - 1
    done = set(
        session.execute(
            select(SloMinute.component).where(
                SloMinute.minute == minute,
                SloMinute.component.in_(("ingest_freshness", "command_delivery")),
            )
        ).scalars()
    )
    counts: dict[tuple[str, int], list[int]] = {}
    if "ingest_freshness" not in done:
        newest = session.execute(
            select(func.max(Device.last_seen)).where(
                Device.presence == "online", Device.status == "active"
            )
        ).scalar_one()
        end = (minute + 1) * MINUTE
        fresh = newest is None or end - float(newest) <= FRESH_S
        counts[("ingest_freshness", minute)] = [int(fresh), 1]
    if "command_delivery" not in done:
        rows = session.execute(
            select(CommandRecord.status, func.count())
            .where(
                CommandRecord.updated_at >= minute * MINUTE,
                CommandRecord.updated_at < (minute + 1) * MINUTE,
                CommandRecord.status.not_in(("pending", "sent", "accepted")),
            )
            .group_by(CommandRecord.status)
        ).all()
        total = sum(int(n) for _, n in rows)
        bad = sum(int(n) for s, n in rows if s in ("expired", "failed"))
        counts[("command_delivery", minute)] = [total - bad, total]
    add_minutes(session, counts)


def series_of(session: Session, component: str, since_minute: int) -> Series:
    """A component's minutes from ``since_minute`` on."""
    rows = session.execute(
        select(SloMinute.minute, SloMinute.good, SloMinute.total).where(
            SloMinute.component == component, SloMinute.minute >= since_minute
        )
    ).all()
    return Series({int(m): (int(g), int(t)) for m, g, t in rows})


def _open_slo_ticket(
    session: Session, settings: SupportSettings, status: Any, now: float
) -> str | None:
    """One open cloud-infrastructure ticket per component under alert."""
    title = f"SLO {status.slo.component}: burn-rate alert"
    existing = session.execute(
        select(Ticket.number).where(
            Ticket.source == "slo",
            Ticket.title == title,
            Ticket.state.in_([s.value for s in OPEN_STATES]),
        )
    ).scalar_one_or_none()
    if existing is not None:
        return None
    worst = status.alerts[0]
    page = worst.severity == "page"
    t = open_ticket(
        session,
        SYSTEM,
        NewTicket(
            title=title,
            category=Category.CLOUD_INFRASTRUCTURE.value,
            requester="slo-monitor",
            requester_kind="internal",
            impact=1 if page else 2,
            urgency=1 if page else 2,
            description=(
                f"burn rate {worst.long_burn:.1f} over {worst.long_min} min and "
                f"{worst.short_burn:.1f} over {worst.short_min} min (threshold {worst.factor}); "
                f"budget left {100 * status.budget_remaining:.1f} %"
            ),
        ),
        settings,
        now=now,
        source="slo",
    )
    return t.number


def evaluate_all(session: Session, settings: SupportSettings, now: float) -> list[dict[str, Any]]:
    """Every SLO's status at ``now``; alerts open tickets and queue webhooks (caller
    commits)."""
    out = []
    for slo in slos_of(settings):
        since = int(now // MINUTE) - int(slo.window_days * DAY_MIN)
        status = evaluate_slo(slo, series_of(session, slo.component, since), now)
        view = status.view()
        if status.alerts:
            number = _open_slo_ticket(session, settings, status, now)
            if number is not None:
                view["ticket"] = number
                notify(session, "slo.alert", {**view, "ticket": number}, now=now)
        out.append(view)
    return out


def run_slo_job(sessions: sessionmaker[Session], settings: Settings, now: float) -> list[str]:
    """The SLO job: record the last minute of ingest and commands, evaluate every SLO;
    returns the components under alert."""
    with sessions() as session, session.begin():
        record_background(session, now)
        statuses = evaluate_all(session, settings.support, now)
    return [s["component"] for s in statuses if s["alerts"]]


def status_page(session: Session, settings: SupportSettings, now: float) -> dict[str, Any]:
    """Read-only: each component's SLO status and its availability per day over 90 days
    (no alerting side effects)."""
    end = int(now // MINUTE)
    components = []
    for slo in slos_of(settings):
        since = min(end - int(slo.window_days * DAY_MIN), (end // DAY_MIN - STATUS_DAYS) * DAY_MIN)
        series = series_of(session, slo.component, since)
        status = evaluate_slo(slo, series, now)
        daily = daily_availability(series, end, STATUS_DAYS)
        known = [d for d in daily if d is not None]
        components.append(
            {
                **status.view(),
                "description": slo.description,
                "days": daily,
                "availability_90d": round(sum(known) / len(known), 6) if known else None,
            }
        )
    return {"generated_at": now, "days": STATUS_DAYS, "components": components}
