"""Lifecycles of recalls, warranty claims and RMAs as transition tables.

Each lifecycle is data (state -> allowed next states) plus one function that checks a
move; an illegal move raises :class:`IllegalTransitionError` naming what *is* allowed, so
the API can answer with a useful 409 instead of a bare refusal.
"""

from __future__ import annotations

from dataclasses import dataclass


class IllegalTransitionError(ValueError):
    """A move the lifecycle does not allow; ``allowed`` lists the legal next states."""

    def __init__(self, lifecycle: str, current: str, wanted: str, allowed: tuple[str, ...]):
        options = ", ".join(allowed) if allowed else "none (final state)"
        super().__init__(
            f"{lifecycle}: cannot go from {current!r} to {wanted!r}; allowed: {options}"
        )
        self.lifecycle = lifecycle
        self.current = current
        self.wanted = wanted
        self.allowed = allowed


@dataclass(frozen=True)
class Lifecycle:
    """A named transition table."""

    name: str
    initial: str
    table: dict[str, tuple[str, ...]]

    @property
    def states(self) -> tuple[str, ...]:
        """Every state, in table order."""
        return tuple(self.table)

    def allowed(self, current: str) -> tuple[str, ...]:
        """States reachable from ``current`` in one move."""
        if current not in self.table:
            raise ValueError(f"{self.name}: unknown state {current!r}")
        return self.table[current]

    def is_final(self, state: str) -> bool:
        """True when nothing follows ``state``."""
        return not self.allowed(state)

    def check(self, current: str, wanted: str) -> str:
        """Return ``wanted`` when the move is legal, else raise :class:`IllegalTransitionError`."""
        if wanted not in self.table:
            raise IllegalTransitionError(self.name, current, wanted, self.allowed(current))
        if wanted not in self.allowed(current):
            raise IllegalTransitionError(self.name, current, wanted, self.allowed(current))
        return wanted


CAMPAIGN = Lifecycle(
    "recall campaign",
    "draft",
    {"draft": ("open", "cancelled"), "open": ("closed",), "closed": (), "cancelled": ()},
)
"""A recall is drafted (scope editable), opened (population frozen), then closed."""

RECALL_DEVICE = Lifecycle(
    "recall device",
    "notified",
    {
        "notified": ("remedied", "not_needed", "unreachable"),
        "unreachable": ("notified", "remedied", "not_needed"),
        "remedied": (),
        "not_needed": (),
    },
)
"""Per-device recall state. ``not_needed`` = inspected, remedy not needed. An
unreachable device that turns up again goes back to ``notified`` (or straight to an
outcome)."""

DONE_DEVICE_STATES = frozenset({"remedied", "not_needed"})
"""Device states that end the recall for that device."""

CLAIM = Lifecycle(
    "warranty claim",
    "submitted",
    {
        "submitted": ("approved", "rejected"),
        "approved": (),
        "rejected": (),
    },
)
"""A warranty claim is decided by a reviewer; automatic checks only inform the decision."""

RMA = Lifecycle(
    "rma",
    "claimed",
    {
        "claimed": ("approved", "rejected"),
        "approved": ("returned",),
        "returned": ("inspected",),
        "inspected": ("refurbished", "scrapped"),
        "refurbished": (),
        "scrapped": (),
        "rejected": (),
    },
)
"""Return merchandise authorisation: claimed -> approved -> returned -> inspected ->
refurbished | scrapped (or rejected at the start)."""

PART_CONDITIONS = ("new", "refurbished")
PART_STOCK = Lifecycle(
    "part",
    "in_stock",
    {
        "in_stock": ("installed", "scrapped"),
        "installed": ("returned",),
        "returned": ("in_stock", "scrapped"),
        "scrapped": (),
    },
)
"""Where a part is: on the shelf, in a device, back from the field, or gone."""
