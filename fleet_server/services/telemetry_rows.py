"""How a telemetry sample becomes a row of the ``telemetry`` table, and why a sample that
was not stored was skipped. Pure: the columns follow the signal declarations
(:data:`protocol.SIGNALS`), so a new signal needs nothing here."""

from __future__ import annotations

from typing import Any

import protocol as p

VITALS = tuple(s.name for s in p.SIGNALS)
"""The signal columns of a telemetry row, in declaration order."""


def sample_row(device_key: int, sample: p.Sample) -> dict[str, Any]:
    """The telemetry table row of one sample."""
    row: dict[str, Any] = {"device_key": device_key, "ts": sample.ts}
    for name in VITALS:
        row[name] = getattr(sample, name)
    row["custom"] = dict(sample.custom) if sample.custom else None
    return row


SAME_SAMPLE = "same_sample"
TS_CONFLICT = "ts_conflict"


def skip_reason(new: dict[str, Any], kept: Any) -> str:
    """Why a sample was not stored when one with its ``(device, ts)`` is kept:
    ``same_sample`` if every signal and the custom values are equal, else
    ``ts_conflict``."""
    for name in (*VITALS, "custom"):
        if new[name] != getattr(kept, name):
            return TS_CONFLICT
    return SAME_SAMPLE
