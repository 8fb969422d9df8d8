"""The SLA clock, pure: a ticket's event history + a policy + a calendar -> where each
target stands at ``now``.

Semantics (after the common ground of Zammad, Jira Service Management and ServiceNow):

* **Targets.** ``first_response`` runs from creation until the first public response by
  an agent (or the resolution, whichever is first) -- one cycle. ``next_update`` runs
  from each public response until the next one, so every response starts a new cycle;
  it does not run before the first response. ``resolution`` runs from creation until the
  ticket is resolved.
* **Calendar.** Only working time of the policy's calendar counts
  (:mod:`fleet_server.domain.sla_calendar`), or every second for ``24x7``.
* **Pause.** While the ticket is in one of the policy's pause states (by default
  ``pending_customer`` and ``pending_third_party``) no target's clock counts.
* **Stop / cancel.** ``resolved`` stops every running cycle (met, or breached if its
  elapsed time passed the target); ``cancelled`` cancels them (neither met nor breached).
* **Reopen.** With ``reset_on_reopen`` the resolution clock starts a fresh cycle at the
  reopening; without it the stopped cycle resumes with the time it had. A reopened ticket
  also owes the requester an update, so a new ``next_update`` cycle starts.
* **Warnings and breach.** A cycle crosses 50 %, 75 % and 100 % of its target at instants
  this module computes exactly (:attr:`Clock.crossings`); the tick turns the crossings
  at or before ``now`` that it has not reported yet into events.

The same machinery measures underpinning contracts: :func:`vendor_clock` counts only the
time spent in ``pending_third_party`` against a vendor's target.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from fleet_server.domain.sla_calendar import Calendar
from fleet_server.domain.tickets import TicketState


class Target(StrEnum):
    """What an SLA measures."""

    FIRST_RESPONSE = "first_response"
    NEXT_UPDATE = "next_update"
    RESOLUTION = "resolution"


THRESHOLDS = (0.5, 0.75, 1.0)
"""Fractions of a target whose crossing is an event (1.0 = the breach)."""

DEFAULT_PAUSE = frozenset(
    {TicketState.PENDING_CUSTOMER.value, TicketState.PENDING_THIRD_PARTY.value}
)


@dataclass(frozen=True)
class HistoryEvent:
    """One fact of a ticket's history the clock reads: ``created``, ``state`` (the new
    state in ``state``) or ``response`` (a public comment by an agent)."""

    at: float
    kind: str
    state: str | None = None


@dataclass(frozen=True)
class SlaPolicy:
    """Which tickets a policy covers (empty selector = any) and its targets in seconds
    of working time of ``calendar`` (a calendar name)."""

    name: str
    targets: dict[Target, float]
    calendar: str = "24x7"
    priorities: frozenset[int] = frozenset()
    categories: frozenset[str] = frozenset()
    customers: frozenset[str] = frozenset()
    pause_states: frozenset[str] = DEFAULT_PAUSE
    reset_on_reopen: bool = True

    def matches(self, priority: int, category: str, customer: str | None) -> bool:
        """True when the ticket falls under this policy's selectors."""
        return (
            (not self.priorities or priority in self.priorities)
            and (not self.categories or category in self.categories)
            and (not self.customers or (customer or "") in self.customers)
        )


def select_policy(
    policies: Sequence[SlaPolicy], priority: int, category: str, customer: str | None
) -> SlaPolicy | None:
    """The first policy (in configuration order) that covers the ticket, or None."""
    return next((p for p in policies if p.matches(priority, category, customer)), None)


@dataclass
class _Cycle:
    started_at: float
    runs: list[list[float | None]] = field(default_factory=list)
    """Counting wall intervals ``[a, b]`` (``b`` None = still counting)."""
    end: str | None = None
    """None while live; ``stopped`` or ``cancelled``."""
    ended_at: float | None = None

    def run(self, at: float) -> None:
        if not self.runs or self.runs[-1][1] is not None:
            self.runs.append([at, None])

    def hold(self, at: float) -> None:
        if self.runs and self.runs[-1][1] is None:
            self.runs[-1][1] = at

    def finish(self, at: float, how: str) -> None:
        self.hold(at)
        self.end, self.ended_at = how, at


@dataclass(frozen=True)
class Cycle:
    """One measured cycle of a target (see :class:`Clock`)."""

    started_at: float
    ended_at: float | None
    end: str | None
    elapsed_s: float
    breached: bool
    breached_at: float | None


@dataclass(frozen=True)
class Clock:
    """Where one target stands at ``now``.

    ``state``: ``idle`` (no cycle yet, e.g. next update before the first response),
    ``running``, ``paused``, ``stopped`` (last cycle ended by a response or resolution) or
    ``cancelled``. ``elapsed_s`` / ``remaining_s`` are working seconds of the current (or
    last) cycle; ``due_at`` is when a running cycle breaches if nothing stops it.
    ``crossings`` are ``(threshold, instant)`` of the current cycle's 50/75/100 %
    crossings that already happened (instant <= now).
    """

    target: Target
    target_s: float
    state: str
    cycle: int
    elapsed_s: float
    remaining_s: float
    breached: bool
    breached_at: float | None
    due_at: float | None
    crossings: tuple[tuple[float, float], ...]
    cycles: tuple[Cycle, ...]

    @property
    def fraction(self) -> float:
        """Elapsed share of the target (1.0 = breached)."""
        return self.elapsed_s / self.target_s if self.target_s > 0 else 0.0

    def view(self) -> dict[str, object]:
        """The clock as the API shows it (epoch seconds)."""
        return {
            "target": self.target.value,
            "target_s": self.target_s,
            "state": self.state,
            "cycle": self.cycle,
            "elapsed_s": round(self.elapsed_s, 1),
            "remaining_s": round(self.remaining_s, 1),
            "percent": round(100 * self.fraction, 1),
            "breached": self.breached,
            "breached_at": self.breached_at,
            "due_at": self.due_at,
        }


def _instant(cal: Calendar, runs: Sequence[Sequence[float | None]], amount: float) -> float | None:
    """The wall instant at which ``amount`` working seconds have been counted over
    ``runs`` (an open last run extends into the future); None if never."""
    counted = 0.0
    for a, b in runs:
        assert a is not None
        if b is None:
            return cal.add_working(a, amount - counted)
        here = cal.working_seconds(a, b)
        if counted + here >= amount:
            return cal.add_working(a, amount - counted)
        counted += here
    return None


def _measure(cal: Calendar, cyc: _Cycle, target_s: float, now: float) -> Cycle:
    elapsed = 0.0
    for a, b in cyc.runs:
        assert a is not None
        elapsed += cal.working_seconds(a, now if b is None else min(b, now))
    breached_at = _instant(cal, cyc.runs, target_s) if cyc.end != "cancelled" else None
    if breached_at is not None and breached_at > now:
        breached_at = None
    return Cycle(
        cyc.started_at, cyc.ended_at, cyc.end, elapsed, breached_at is not None, breached_at
    )


def _clock(
    target: Target, target_s: float, cycles: list[_Cycle], cal: Calendar, now: float
) -> Clock:
    measured = tuple(_measure(cal, c, target_s, now) for c in cycles)
    if not cycles:
        return Clock(target, target_s, "idle", 0, 0.0, target_s, False, None, None, (), ())
    last, cur = cycles[-1], measured[-1]
    if last.end is not None:
        state = last.end
    elif last.runs and last.runs[-1][1] is None:
        state = "running"
    else:
        state = "paused"
    due = _instant(cal, last.runs, target_s) if state == "running" else None
    crossings: list[tuple[float, float]] = []
    if state != "cancelled":
        for th in THRESHOLDS:
            at = _instant(cal, last.runs, th * target_s)
            if at is not None and at <= now:
                crossings.append((th, at))
    return Clock(
        target,
        target_s,
        state,
        len(cycles) - 1,
        cur.elapsed_s,
        max(0.0, target_s - cur.elapsed_s),
        cur.breached,
        cur.breached_at,
        due,
        tuple(crossings),
        measured,
    )


def _walk(
    history: Iterable[HistoryEvent], policy: SlaPolicy, now: float
) -> dict[Target, list[_Cycle]]:
    """Replay the history into the cycles of each target."""
    cycles: dict[Target, list[_Cycle]] = {t: [] for t in Target}
    responded = False
    state = TicketState.NEW.value
    paused = False

    def live(t: Target) -> _Cycle | None:
        c = cycles[t]
        return c[-1] if c and c[-1].end is None else None

    def start(t: Target, at: float) -> None:
        cyc = _Cycle(at)
        if not paused:
            cyc.run(at)
        cycles[t].append(cyc)

    for ev in sorted(history, key=lambda e: e.at):
        if ev.at > now:
            break
        if ev.kind == "created":
            start(Target.FIRST_RESPONSE, ev.at)
            start(Target.RESOLUTION, ev.at)
        elif ev.kind == "response":
            if state in (TicketState.RESOLVED, TicketState.CLOSED, TicketState.CANCELLED):
                continue
            fr = live(Target.FIRST_RESPONSE)
            if fr is not None:
                fr.finish(ev.at, "stopped")
            responded = True
            nu = live(Target.NEXT_UPDATE)
            if nu is not None:
                nu.finish(ev.at, "stopped")
            start(Target.NEXT_UPDATE, ev.at)
        elif ev.kind == "state" and ev.state:
            new = ev.state
            was = state
            state = new
            if new in (TicketState.RESOLVED, TicketState.CLOSED):
                for t in Target:
                    c = live(t)
                    if c is not None:
                        c.finish(ev.at, "stopped")
                paused = False
                continue
            if new == TicketState.CANCELLED:
                for t in Target:
                    c = live(t)
                    if c is not None:
                        c.finish(ev.at, "cancelled")
                continue
            if new == TicketState.REOPENED and was in (TicketState.RESOLVED, TicketState.CLOSED):
                paused = False
                res = cycles[Target.RESOLUTION]
                if policy.reset_on_reopen or not res:
                    start(Target.RESOLUTION, ev.at)
                else:
                    res[-1].end = res[-1].ended_at = None
                    res[-1].run(ev.at)
                if responded:
                    start(Target.NEXT_UPDATE, ev.at)
                continue
            now_paused = new in policy.pause_states
            if now_paused and not paused:
                for t in Target:
                    c = live(t)
                    if c is not None:
                        c.hold(ev.at)
            elif paused and not now_paused:
                for t in Target:
                    c = live(t)
                    if c is not None:
                        c.run(ev.at)
            paused = now_paused
    return cycles


def evaluate(
    history: Iterable[HistoryEvent], policy: SlaPolicy, calendar: Calendar, now: float
) -> dict[Target, Clock]:
    """Every target of ``policy`` at ``now`` for a ticket with ``history`` (events after
    ``now`` are ignored, so the same history evaluated at successive instants replays
    the ticket's life)."""
    cycles = _walk(history, policy, now)
    return {
        t: _clock(t, target_s, cycles[t], calendar, now) for t, target_s in policy.targets.items()
    }


def vendor_clock(
    history: Iterable[HistoryEvent], target_s: float, calendar: Calendar, now: float
) -> Clock:
    """A vendor's underpinning contract: working time the ticket spent in
    ``pending_third_party`` (all spells of the ticket's life, one cycle) against the
    vendor's target."""
    cyc: _Cycle | None = None
    for ev in sorted(history, key=lambda e: e.at):
        if ev.at > now:
            break
        if ev.kind != "state":
            continue
        if ev.state == TicketState.PENDING_THIRD_PARTY:
            cyc = cyc or _Cycle(ev.at)
            cyc.run(ev.at)
        elif cyc is not None:
            cyc.hold(ev.at)
    return _clock(Target.RESOLUTION, target_s, [cyc] if cyc else [], calendar, now)


def new_crossings(
    clock: Clock, reported_cycle: int | None, reported: float
) -> list[tuple[float, float]]:
    """Crossings of ``clock``'s current cycle not reported yet, given the cycle and the
    highest threshold the last tick reported (a new cycle reports from scratch)."""
    floor = reported if reported_cycle == clock.cycle else 0.0
    return [(th, at) for th, at in clock.crossings if th > floor]


def breaching_label(due_at: float | None, now: float) -> str:
    """``breaching in 2 h 5 min`` / ``breached 30 min ago`` / ``paused`` for lists."""
    if due_at is None:
        return "-"
    delta = due_at - now
    minutes = int(abs(delta) // 60)
    hours, mins = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = ([f"{days} d"] if days else []) + ([f"{hours} h"] if hours else [])
    if not days:
        parts.append(f"{mins} min")
    text = " ".join(parts)
    return f"breaching in {text}" if delta >= 0 else f"breached {text} ago"
