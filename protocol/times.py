"""Times in sentences people read: ISO 8601 UTC, never raw epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(ts: float) -> str:
    """``ts`` (epoch seconds) as an ISO 8601 UTC date to the second, e.g.
    ``2026-12-02T11:05:30Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
