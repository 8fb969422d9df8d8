"""Device clock offset: measured on every message, judged against a bound.

The offset is the device's ``ts`` minus the server's receipt time (positive: the device
clock runs ahead). Transit and queueing only delay receipt, so within one batch the
largest ``ts - received_at`` is the closest estimate; a backlog flushed after an outage
reads as a clock behind until a fresh message (the ``online`` presence) arrives with it.
"""

from __future__ import annotations

CLOCK_SKEW = "clock_skew"
"""Code of the warning alarm raised while a device clock is off by more than the bound."""


def offset_estimate(pairs: list[tuple[float, float]]) -> float | None:
    """The offset from ``(device_ts, received_at)`` pairs of one batch (None if empty)."""
    return max((ts - received for ts, received in pairs), default=None)


def is_skewed(offset_s: float | None, bound_s: float) -> bool:
    """True when the device clock is further than ``bound_s`` from the server's: its
    timestamps then no longer order its presence and vitals (server receipt does)."""
    return offset_s is not None and abs(offset_s) > bound_s


def skew_message(offset_s: float, bound_s: float) -> str:
    """The sentence of the ``clock_skew`` alarm."""
    side = "ahead of" if offset_s > 0 else "behind"
    return (
        f"device clock runs {abs(offset_s):.0f} s {side} the server's (bound {bound_s:.0f} s); "
        "its presence and latest vitals are ordered by server receipt"
    )
