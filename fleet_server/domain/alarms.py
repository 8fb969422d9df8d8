"""Alarm lifecycle: a fault raised opens an alarm, a fault cleared closes it.

One open alarm per (device, code): raising an already open code counts an occurrence and
keeps the most severe severity seen; clearing closes it (history is kept: closed alarms
stay in the table). Acknowledging marks who looked at it; it does not close it.
"""

from __future__ import annotations

from enum import StrEnum

from protocol import Severity

_SEVERITY_ORDER = [
    Severity.INFO,
    Severity.WARNING,
    Severity.MINOR,
    Severity.MAJOR,
    Severity.CRITICAL,
]


class AlarmState(StrEnum):
    """Where an alarm is in its life."""

    OPEN = "open"
    CLEARED = "cleared"


def more_severe(a: str, b: str) -> str:
    """The more severe of two severity names (unknown names rank lowest)."""
    return a if severity_rank(a) >= severity_rank(b) else b


def severity_rank(severity: str) -> int:
    """0 for info up to 4 for critical; used to sort alarm lists most severe first."""
    try:
        return _SEVERITY_ORDER.index(Severity(severity))
    except ValueError:
        return -1
