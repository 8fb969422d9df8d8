"""Per-batch device clock offsets for the ingest, and the ``clock_skew`` alarm."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session

from fleet_server.domain.clock_skew import CLOCK_SKEW, is_skewed, offset_estimate, skew_message
from fleet_server.services.alarms import set_condition


class ClockRow(Protocol):
    """The part of the ingest's device row this module reads and sets."""

    key: int
    clock_offset_s: float | None
    new_clock_offset_s: float | None
    skewed: bool
    vitals_ts: float | None


class Received(Protocol):
    """What this module reads of a received message's record."""

    @property
    def received_at(self) -> float:
        """When the server received the message."""
        ...


def measure_clocks(
    fresh: Iterable[tuple[Received, Any, ClockRow]], bound_s: float, now: float
) -> None:
    """Set each device's offset measured on this batch's ``(received, message, row)``
    (see :mod:`fleet_server.domain.clock_skew`) and whether its clock is out of bound.
    Held vitals stamped in the server's future (by a clock that ran ahead) stop ordering:
    the next sample replaces them."""
    pairs: dict[int, list[tuple[float, float]]] = {}
    rows: dict[int, ClockRow] = {}
    for received, msg, dev in fresh:
        pairs.setdefault(dev.key, []).append((msg.ts, received.received_at))
        rows[dev.key] = dev
    for key, dev in rows.items():
        dev.new_clock_offset_s = offset_estimate(pairs[key])
        dev.skewed = is_skewed(dev.new_clock_offset_s, bound_s)
        if dev.vitals_ts is not None and dev.vitals_ts > now + bound_s:
            dev.vitals_ts = None


def skew_alarms(session: Session, devices: Iterable[ClockRow], now: float, bound_s: float) -> None:
    """Open ``clock_skew`` when a device's clock leaves the bound, clear it on return."""
    for dev in devices:
        new = dev.new_clock_offset_s
        if new is None or dev.skewed == is_skewed(dev.clock_offset_s, bound_s):
            continue
        message = skew_message(new, bound_s) if dev.skewed else "device clock back in bound"
        set_condition(
            session, dev.key, CLOCK_SKEW, active=dev.skewed, now=now, message=message, value=new
        )
