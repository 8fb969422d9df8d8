"""How a telemetry sample becomes a row of the ``telemetry`` table, and why a sample that
was not stored was skipped. Pure: the columns follow the signal declarations
(:data:`protocol.SIGNALS`), so a new signal needs nothing here."""

from __future__ import annotations

from typing import Any

from msgspec.structs import astuple

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


_FIELDS = p.Sample.__struct_fields__
_VITAL_AT = [(name, _FIELDS.index(name)) for name in VITALS]
_CUSTOM_AT = _FIELDS.index("custom")


def sample_columns(
    device_keys: list[int], stamps: list[float], samples: list[p.Sample]
) -> dict[str, list[Any]]:
    """The telemetry rows of ``samples`` (the i-th of ``device_keys``' device, stamped
    ``stamps[i]``, its ``ts``) column by column, as :func:`sample_row` gives them row by
    row (each sample's fields read in one call, then transposed). A column no sample
    has a value for is left out (it is ``NULL`` in every row)."""
    n = len(samples)
    columns: dict[str, list[Any]] = {"device_key": device_keys, "ts": stamps}
    if not n:
        return columns
    fields = list(zip(*map(astuple, samples), strict=True))
    for name, at in _VITAL_AT:
        values = fields[at]
        if values.count(None) != n:
            columns[name] = list(values)
    custom = [dict(c) if c else None for c in fields[_CUSTOM_AT]]
    if custom.count(None) != n:
        columns["custom"] = custom
    return columns


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
