"""Support tickets as data, pure: states and their transition table, categories, link
kinds, and the ITIL impact x urgency -> priority matrix.

The lifecycle (``(state, event) -> state`` on :class:`~fleet_server.domain.lifecycles.
StateMachine`)::

    new -> in_progress <-> pending_customer / pending_third_party
    new | in_progress | pending_* | reopened -> resolved -> closed
    resolved -> reopened -> in_progress ...
    new | in_progress | pending_* | reopened -> cancelled

``closed`` and ``cancelled`` are final. The SLA clocks
(:mod:`fleet_server.domain.sla_clock`) read only the sequence of states and responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from fleet_server.domain.lifecycles import StateMachine
from fleet_server.errors import InvalidInputError


class TicketState(StrEnum):
    """Where a ticket is."""

    NEW = "new"
    IN_PROGRESS = "in_progress"
    PENDING_CUSTOMER = "pending_customer"
    PENDING_THIRD_PARTY = "pending_third_party"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"
    CANCELLED = "cancelled"


class TicketEvent(StrEnum):
    """What an agent (or the requester) does to a ticket."""

    START = "start"
    WAIT_CUSTOMER = "wait_customer"
    WAIT_THIRD_PARTY = "wait_third_party"
    RESUME = "resume"
    RESOLVE = "resolve"
    CLOSE = "close"
    REOPEN = "reopen"
    CANCEL = "cancel"


_S, _E = TicketState, TicketEvent
_WORKING = (_S.NEW, _S.IN_PROGRESS, _S.PENDING_CUSTOMER, _S.PENDING_THIRD_PARTY, _S.REOPENED)
_TABLE: dict[tuple[TicketState, TicketEvent], TicketState] = {}
for _state in _WORKING:
    _TABLE[(_state, _E.RESOLVE)] = _S.RESOLVED
    _TABLE[(_state, _E.CANCEL)] = _S.CANCELLED
    if _state is not _S.PENDING_CUSTOMER:
        _TABLE[(_state, _E.WAIT_CUSTOMER)] = _S.PENDING_CUSTOMER
    if _state is not _S.PENDING_THIRD_PARTY:
        _TABLE[(_state, _E.WAIT_THIRD_PARTY)] = _S.PENDING_THIRD_PARTY
_TABLE[(_S.NEW, _E.START)] = _S.IN_PROGRESS
_TABLE[(_S.REOPENED, _E.START)] = _S.IN_PROGRESS
_TABLE[(_S.PENDING_CUSTOMER, _E.RESUME)] = _S.IN_PROGRESS
_TABLE[(_S.PENDING_THIRD_PARTY, _E.RESUME)] = _S.IN_PROGRESS
_TABLE[(_S.RESOLVED, _E.CLOSE)] = _S.CLOSED
_TABLE[(_S.RESOLVED, _E.REOPEN)] = _S.REOPENED

TICKET: StateMachine[TicketState, TicketEvent] = StateMachine(
    "ticket", TicketState, TicketEvent, TicketState.NEW, _TABLE
)
"""The ticket lifecycle; ``closed`` and ``cancelled`` accept nothing."""

OPEN_STATES = frozenset(
    {_S.NEW, _S.IN_PROGRESS, _S.PENDING_CUSTOMER, _S.PENDING_THIRD_PARTY, _S.REOPENED}
)
"""States in which a ticket still needs work (the backlog)."""
DONE_STATES = frozenset({_S.RESOLVED, _S.CLOSED, _S.CANCELLED})


class Category(StrEnum):
    """What a ticket is about."""

    DEVICE_HARDWARE = "device_hardware"
    DEVICE_SOFTWARE = "device_software"
    WEB_MOBILE_APP = "web_mobile_app"
    CLOUD_INFRASTRUCTURE = "cloud_infrastructure"
    SECURITY_INCIDENT = "security_incident"
    THIRD_PARTY_APP = "third_party_app"


class LinkKind(StrEnum):
    """What a ticket can point at (each by its own id)."""

    DEVICE = "device"
    ALARM = "alarm"
    CLAIM = "claim"
    RMA = "rma"
    RECALL = "recall"
    ROLLOUT = "rollout"
    ADVISORY = "advisory"


LEVELS = (1, 2, 3)
"""Impact and urgency: 1 high, 2 medium, 3 low."""

DEFAULT_MATRIX: dict[str, int] = {
    "1x1": 1,
    "1x2": 2,
    "1x3": 3,
    "2x1": 2,
    "2x2": 3,
    "2x3": 4,
    "3x1": 3,
    "3x2": 4,
    "3x3": 5,
}
"""ITIL's usual matrix: ``"<impact>x<urgency>"`` -> priority 1 (critical) .. 5 (planning)."""


def check_matrix(matrix: Mapping[str, int]) -> dict[str, int]:
    """``matrix`` when it gives a priority 1-5 for every impact x urgency pair."""
    wanted = {f"{i}x{u}" for i in LEVELS for u in LEVELS}
    missing = sorted(wanted - set(matrix))
    extra = sorted(set(matrix) - wanted)
    if missing or extra:
        raise InvalidInputError(
            "invalid_priority_matrix",
            f"priority matrix: missing {missing or 'none'}, unknown {extra or 'none'}",
        )
    bad = sorted(k for k, v in matrix.items() if not (isinstance(v, int) and 1 <= v <= 5))
    if bad:
        raise InvalidInputError("invalid_priority_matrix", f"priority matrix: {bad} not 1-5")
    return dict(matrix)


def priority_of(impact: int, urgency: int, matrix: Mapping[str, int] = DEFAULT_MATRIX) -> int:
    """The priority the matrix gives ``impact`` x ``urgency`` (each 1-3)."""
    if impact not in LEVELS or urgency not in LEVELS:
        raise InvalidInputError(
            "invalid_ticket", f"impact and urgency are 1, 2 or 3 (got {impact}, {urgency})"
        )
    return int(matrix[f"{impact}x{urgency}"])


def parse_category(value: str) -> Category:
    """``value`` as a category, or a clear ``invalid_ticket`` naming the choices."""
    try:
        return Category(value)
    except ValueError:
        choices = ", ".join(c.value for c in Category)
        raise InvalidInputError("invalid_ticket", f"category {value!r}: one of {choices}") from None


def parse_link_kind(value: str) -> LinkKind:
    """``value`` as a link kind, or ``invalid_ticket`` naming the choices."""
    try:
        return LinkKind(value)
    except ValueError:
        choices = ", ".join(k.value for k in LinkKind)
        raise InvalidInputError(
            "invalid_ticket", f"link kind {value!r}: one of {choices}"
        ) from None
