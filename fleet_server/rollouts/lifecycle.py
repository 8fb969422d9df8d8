"""Rollout lifecycle as data: ``(state, event) -> state``, nothing else is legal.

::

    draft --schedule--> scheduled --start--> running --complete--> completed
      |                   |                   |  ^
      +------start--------+------------------>|  | resume
                                              v  |
                                   paused / halted --rollback--> rolled_back
    draft, scheduled, running, paused, halted --cancel--> cancelled
    completed --rollback--> rolled_back   (a bad release found after completion)

``running`` is left for ``halted`` by the engine (a failure criterion or health gate) and
for ``paused`` by an operator. ``cancelled`` and ``rolled_back`` accept no event;
``completed`` accepts only ``rollback``. ``scheduled`` is reserved for rollouts with a start
time (no API sets it yet).
"""

from __future__ import annotations

from enum import StrEnum

from fleet_server.domain.lifecycles import IllegalTransitionError, StateMachine

__all__ = ["MACHINE", "IllegalTransitionError", "transition"]


class RolloutState(StrEnum):
    """Where a rollout is in its life."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(StrEnum):
    """What can happen to a rollout (operator actions and engine decisions)."""

    SCHEDULE = "schedule"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    HALT = "halt"
    COMPLETE = "complete"
    CANCEL = "cancel"
    ROLLBACK = "rollback"


S, E = RolloutState, RolloutEvent

TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (S.DRAFT, E.SCHEDULE): S.SCHEDULED,
    (S.DRAFT, E.START): S.RUNNING,
    (S.DRAFT, E.CANCEL): S.CANCELLED,
    (S.SCHEDULED, E.START): S.RUNNING,
    (S.SCHEDULED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.HALT): S.HALTED,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.ROLLBACK): S.ROLLED_BACK,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.HALT): S.HALTED,
    (S.PAUSED, E.CANCEL): S.CANCELLED,
    (S.PAUSED, E.ROLLBACK): S.ROLLED_BACK,
    (S.HALTED, E.RESUME): S.RUNNING,
    (S.HALTED, E.CANCEL): S.CANCELLED,
    (S.HALTED, E.ROLLBACK): S.ROLLED_BACK,
    # A bad release found after completion can still be sent back.
    (S.COMPLETED, E.ROLLBACK): S.ROLLED_BACK,
}

TERMINAL = frozenset({S.COMPLETED, S.CANCELLED, S.ROLLED_BACK})
ACTIVE = frozenset({S.SCHEDULED, S.RUNNING, S.PAUSED, S.HALTED})
"""States in which a rollout holds its devices (no other rollout may take them)."""


MACHINE: StateMachine[RolloutState, RolloutEvent] = StateMachine(
    "rollout", RolloutState, RolloutEvent, S.DRAFT, TRANSITIONS
)
"""The rollout lifecycle on the generic machine every lifecycle of the server uses."""


def transition(state: RolloutState | str, event: RolloutEvent | str) -> RolloutState:
    """The state after ``event``; raises :class:`IllegalTransitionError` (a conflict naming
    the allowed events) when not allowed."""
    return MACHINE.apply(state, event)
