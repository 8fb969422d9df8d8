"""Lifecycles as data: one generic :class:`StateMachine` and the tables of recalls, recall
members, warranty claims, RMAs, parts and deployment executions.

A lifecycle is a table ``(state, event) -> state`` over two ``StrEnum`` types, nothing
else is legal. :meth:`StateMachine.apply` moves along one entry; an event the state does
not allow raises :class:`IllegalTransitionError` (a 409 ``conflict``) naming the events
that *are* allowed. APIs that name the wanted *state* (``POST .../transition {"state":
"approved"}``) use :meth:`StateMachine.move_to`, which finds the event leading there and
refuses with the allowed next states.

The rollout lifecycle (``fleet_server.rollouts.lifecycle``) has the same shape and can
be expressed as ``StateMachine("rollout", RolloutState, RolloutEvent, S.DRAFT,
TRANSITIONS)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from fleet_server.errors import ConflictError

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class IllegalTransitionError(ConflictError):
    """A move the lifecycle does not allow (409 ``conflict``).

    ``allowed`` lists what *is* allowed from ``current``: events for :meth:`StateMachine.apply`,
    next states for :meth:`StateMachine.move_to` (the vocabulary of the request).
    ``details`` carries ``current``, ``wanted`` (the refused event or state) and ``allowed``.
    """

    def __init__(
        self, lifecycle: str, current: str, wanted: str, allowed: tuple[str, ...], message: str
    ) -> None:
        super().__init__(
            "conflict",
            message,
            {"current": str(current), "wanted": str(wanted), "allowed": [str(a) for a in allowed]},
        )
        self.lifecycle = lifecycle
        self.current = current
        self.wanted = wanted
        self.allowed = allowed


@dataclass(frozen=True)
class StateMachine(Generic[S, E]):
    """A named transition table ``(state, event) -> state`` over typed states and events."""

    name: str
    states: type[S]
    events: type[E]
    initial: S
    transitions: Mapping[tuple[S, E], S]
    _by_state: dict[S, dict[E, S]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_state: dict[S, dict[E, S]] = {s: {} for s in self.states}
        for (state, event), target in self.transitions.items():
            by_state[self.states(state)][self.events(event)] = self.states(target)
        object.__setattr__(self, "_by_state", by_state)

    def state(self, value: S | str) -> S:
        """``value`` as a state; an unknown name is a ``ValueError`` (a bug, not a request)."""
        try:
            return self.states(value)
        except ValueError:
            raise ValueError(f"{self.name}: unknown state {value!r}") from None

    def allowed_events(self, state: S | str) -> tuple[E, ...]:
        """Events ``state`` accepts, in table order."""
        return tuple(self._by_state[self.state(state)])

    def next_states(self, state: S | str) -> tuple[S, ...]:
        """States reachable from ``state`` in one move, in table order, without repeats."""
        return tuple(dict.fromkeys(self._by_state[self.state(state)].values()))

    def is_final(self, state: S | str) -> bool:
        """True when ``state`` accepts no event."""
        return not self._by_state[self.state(state)]

    @property
    def terminal(self) -> frozenset[S]:
        """Every state that accepts no event."""
        return frozenset(s for s, moves in self._by_state.items() if not moves)

    def apply(self, state: S | str, event: E | str) -> S:
        """The state after ``event``; raises :class:`IllegalTransitionError` naming the
        allowed events when the table has no such entry."""
        current = self.state(state)
        moves = self._by_state[current]
        try:
            happened: E | None = self.events(event)
        except ValueError:
            happened = None
        if happened is not None and happened in moves:
            return moves[happened]
        allowed = tuple(moves)
        hint = f"allowed: {', '.join(sorted(allowed))}" if allowed else f"{current} is final"
        article = "an" if self.name[:1] in "aeiou" else "a"
        raise IllegalTransitionError(
            self.name,
            current,
            str(event),
            allowed,
            f"cannot {event} {article} {self.name} that is {current} ({hint})",
        )

    def event_to(self, state: S | str, wanted: S | str) -> E:
        """The event that moves ``state`` to ``wanted``; raises :class:`IllegalTransitionError`
        naming the allowed next states when none does (or ``wanted`` is no state at all)."""
        current = self.state(state)
        for event, target in self._by_state[current].items():
            if target == wanted:
                return event
        allowed = self.next_states(current)
        options = ", ".join(allowed) if allowed else "none (final state)"
        raise IllegalTransitionError(
            self.name,
            current,
            str(wanted),
            allowed,
            f"{self.name}: cannot go from {str(current)!r} to {str(wanted)!r}; allowed: {options}",
        )

    def move_to(self, state: S | str, wanted: S | str) -> S:
        """``wanted`` when one event leads there from ``state`` (for APIs that name the
        next state), else :class:`IllegalTransitionError` with the allowed next states."""
        return self.apply(state, self.event_to(state, wanted))

    check = move_to
    """Alias kept for callers written against the allowed-next-states tables."""


# --- recall campaigns ---------------------------------------------------------------------


class CampaignState(StrEnum):
    """Where a recall campaign is."""

    DRAFT = "draft"
    OPEN = "open"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class CampaignEvent(StrEnum):
    """What an operator does to a campaign."""

    OPEN = "open"
    CLOSE = "close"
    CANCEL = "cancel"


CAMPAIGN: StateMachine[CampaignState, CampaignEvent] = StateMachine(
    "recall campaign",
    CampaignState,
    CampaignEvent,
    CampaignState.DRAFT,
    {
        (CampaignState.DRAFT, CampaignEvent.OPEN): CampaignState.OPEN,
        (CampaignState.DRAFT, CampaignEvent.CANCEL): CampaignState.CANCELLED,
        (CampaignState.OPEN, CampaignEvent.CLOSE): CampaignState.CLOSED,
    },
)
"""A recall is drafted (scope editable), opened (population frozen), then closed."""


# --- recall members -----------------------------------------------------------------------


class MemberState(StrEnum):
    """Where one device of a recall's population is."""

    NOTIFIED = "notified"
    UNREACHABLE = "unreachable"
    REMEDIED = "remedied"
    NOT_NEEDED = "not_needed"


class MemberEvent(StrEnum):
    """What happens to one member."""

    REMEDY = "remedy"
    INSPECT_OK = "inspect_ok"
    LOSE = "lose"
    FIND = "find"


_M, _ME = MemberState, MemberEvent
RECALL_DEVICE: StateMachine[MemberState, MemberEvent] = StateMachine(
    "recall device",
    MemberState,
    MemberEvent,
    MemberState.NOTIFIED,
    {
        (_M.NOTIFIED, _ME.REMEDY): _M.REMEDIED,
        (_M.NOTIFIED, _ME.INSPECT_OK): _M.NOT_NEEDED,
        (_M.NOTIFIED, _ME.LOSE): _M.UNREACHABLE,
        (_M.UNREACHABLE, _ME.FIND): _M.NOTIFIED,
        (_M.UNREACHABLE, _ME.REMEDY): _M.REMEDIED,
        (_M.UNREACHABLE, _ME.INSPECT_OK): _M.NOT_NEEDED,
    },
)
"""Per-device recall state. ``not_needed`` = inspected, remedy not needed. An
unreachable device that turns up again goes back to ``notified`` (or straight to an
outcome)."""

DONE_DEVICE_STATES = frozenset({MemberState.REMEDIED, MemberState.NOT_NEEDED})
"""Device states that end the recall for that device."""


# --- warranty claims ----------------------------------------------------------------------


class ClaimState(StrEnum):
    """Where a warranty claim is."""

    SUBMITTED = "submitted"
    APPROVED = "approved"
    REJECTED = "rejected"


class ClaimEvent(StrEnum):
    """A reviewer's decision."""

    APPROVE = "approve"
    REJECT = "reject"


CLAIM: StateMachine[ClaimState, ClaimEvent] = StateMachine(
    "warranty claim",
    ClaimState,
    ClaimEvent,
    ClaimState.SUBMITTED,
    {
        (ClaimState.SUBMITTED, ClaimEvent.APPROVE): ClaimState.APPROVED,
        (ClaimState.SUBMITTED, ClaimEvent.REJECT): ClaimState.REJECTED,
    },
)
"""A warranty claim is decided by a reviewer; automatic checks only inform the decision."""


# --- RMAs ---------------------------------------------------------------------------------


class RmaState(StrEnum):
    """Where a return is."""

    CLAIMED = "claimed"
    APPROVED = "approved"
    RETURNED = "returned"
    INSPECTED = "inspected"
    REFURBISHED = "refurbished"
    SCRAPPED = "scrapped"
    REJECTED = "rejected"


class RmaEvent(StrEnum):
    """What happens to a return."""

    APPROVE = "approve"
    REJECT = "reject"
    RECEIVE = "receive"
    INSPECT = "inspect"
    REFURBISH = "refurbish"
    SCRAP = "scrap"


_R, _RE = RmaState, RmaEvent
RMA: StateMachine[RmaState, RmaEvent] = StateMachine(
    "rma",
    RmaState,
    RmaEvent,
    RmaState.CLAIMED,
    {
        (_R.CLAIMED, _RE.APPROVE): _R.APPROVED,
        (_R.CLAIMED, _RE.REJECT): _R.REJECTED,
        (_R.APPROVED, _RE.RECEIVE): _R.RETURNED,
        (_R.RETURNED, _RE.INSPECT): _R.INSPECTED,
        (_R.INSPECTED, _RE.REFURBISH): _R.REFURBISHED,
        (_R.INSPECTED, _RE.SCRAP): _R.SCRAPPED,
    },
)
"""Return merchandise authorisation: claimed -> approved -> returned -> inspected ->
refurbished | scrapped (or rejected at the start)."""


# --- parts --------------------------------------------------------------------------------

PART_CONDITIONS = ("new", "refurbished")


class PartState(StrEnum):
    """Where a part is: on the shelf, in a device, back from the field, or gone."""

    IN_STOCK = "in_stock"
    INSTALLED = "installed"
    RETURNED = "returned"
    SCRAPPED = "scrapped"


class PartEvent(StrEnum):
    """What happens to a part."""

    INSTALL = "install"
    REMOVE = "remove"
    RESTOCK = "restock"
    SCRAP = "scrap"


_P, _PE = PartState, PartEvent
PART_STOCK: StateMachine[PartState, PartEvent] = StateMachine(
    "part",
    PartState,
    PartEvent,
    PartState.IN_STOCK,
    {
        (_P.IN_STOCK, _PE.INSTALL): _P.INSTALLED,
        (_P.IN_STOCK, _PE.SCRAP): _P.SCRAPPED,
        (_P.INSTALLED, _PE.REMOVE): _P.RETURNED,
        (_P.RETURNED, _PE.RESTOCK): _P.IN_STOCK,
        (_P.RETURNED, _PE.SCRAP): _P.SCRAPPED,
    },
)
"""A part goes from the shelf into a device, comes back with a return, and is either
restocked (refurbished) or scrapped."""


# --- deployment executions ----------------------------------------------------------------


class ExecutionState(StrEnum):
    """An execution's status (the reported phase is finer and lives beside it)."""

    PENDING = "pending"
    SENT = "sent"
    IN_PROGRESS = "in_progress"
    COMMITTED = "committed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ExecutionEvent(StrEnum):
    """What happens to an execution: the server's actions and the device's reports."""

    SEND = "send"
    SEND_FAILED = "send_failed"
    PROGRESS = "progress"
    COMMIT = "commit"
    FAIL = "fail"
    REJECT = "reject"
    TIME_OUT = "time_out"
    CANCEL = "cancel"


_X, _XE = ExecutionState, ExecutionEvent
EXECUTION: StateMachine[ExecutionState, ExecutionEvent] = StateMachine(
    "execution",
    ExecutionState,
    ExecutionEvent,
    ExecutionState.PENDING,
    {
        (_X.PENDING, _XE.SEND): _X.SENT,
        (_X.PENDING, _XE.CANCEL): _X.CANCELLED,
        (_X.PENDING, _XE.REJECT): _X.FAILED,
        # A report can overtake a send that is being retried after a broker failure.
        (_X.PENDING, _XE.PROGRESS): _X.IN_PROGRESS,
        (_X.PENDING, _XE.COMMIT): _X.COMMITTED,
        (_X.PENDING, _XE.FAIL): _X.FAILED,
        (_X.SENT, _XE.SEND_FAILED): _X.PENDING,
        (_X.SENT, _XE.PROGRESS): _X.IN_PROGRESS,
        (_X.SENT, _XE.COMMIT): _X.COMMITTED,
        (_X.SENT, _XE.FAIL): _X.FAILED,
        (_X.SENT, _XE.REJECT): _X.FAILED,
        (_X.SENT, _XE.TIME_OUT): _X.FAILED,
        (_X.SENT, _XE.CANCEL): _X.CANCELLED,
        (_X.IN_PROGRESS, _XE.PROGRESS): _X.IN_PROGRESS,
        (_X.IN_PROGRESS, _XE.COMMIT): _X.COMMITTED,
        (_X.IN_PROGRESS, _XE.FAIL): _X.FAILED,
        (_X.IN_PROGRESS, _XE.TIME_OUT): _X.FAILED,
    },
)
"""``pending`` (created) -> ``sent`` (the ``Install`` command is on the broker; a failed
publish puts it back) -> ``in_progress`` (the device reported a step) -> ``committed``
(success, and only then) or ``failed`` (reported ``failed``/``rolled_back``, refused the
command, or silent past its phase's timeout); ``cancelled`` by an operator before the
device started. Committed, failed and cancelled accept nothing: a late report is only
recorded in the history."""
