"""Health signals, declared once: each ``Sample`` field carries its own metadata.

A signal is a field of :class:`protocol.messages.Sample` whose annotation includes
:func:`signal` (label, unit, source, description) beside its range constraints. Everything
else is derived from that one declaration by :func:`signals_of`: the server's telemetry
columns and ingest, the API's telemetry schema, ``fleet-agent doctor``'s labels and the
README's signals table (:func:`markdown_table`, checked by a test). Adding a signal is
therefore: the field in ``Sample``, its probe in ``agent/collectors.py``, a migration
adding its column, and the regenerated README table.

Pure: reads type annotations, no I/O.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Annotated, Any

from msgspec import Meta

_SOURCE = "source"
_UNIT = "unit"
_KINDS = (bool, int, float)
BITS = "bits"
"""The unit of a bit field (shown in hexadecimal)."""


def signal(label: str, unit: str = "", *, source: str, description: str) -> Meta:
    """The metadata of one health signal, to put in its ``Sample`` field's annotation.

    ``label`` is the short human name (doctor, README), ``unit`` is shown after values
    (``""`` for counts and flags, :data:`BITS` for a bit field), ``source`` says where
    the agent reads it and ``description`` what it means. The field's range stays in
    its type's ``Meta``.
    """
    return Meta(title=label, description=description, extra={_UNIT: unit, _SOURCE: source})


@dataclass(frozen=True, slots=True)
class Signal:
    """One health signal as declared on ``Sample``."""

    name: str
    kind: type
    """``float``, ``int`` or ``bool``: how it is stored (column type) and rendered."""
    label: str
    unit: str
    source: str
    description: str
    ge: float | None = None
    le: float | None = None

    @property
    def range_text(self) -> str:
        """The accepted range for humans: ``0 – 100``, ``≥ 0``, or ``""`` for flags."""
        if self.ge is None and self.le is None:
            return ""
        huge = self.le is not None and self.le >= 1e15
        if self.le is None or huge:
            return f"≥ {self.ge:g}"
        if self.ge is None:
            return f"≤ {self.le:g}"
        if self.unit == BITS:
            return f"{int(self.ge):#x} – {int(self.le):#x}"
        return f"{self.ge:g} – {self.le:g}"


def _unwrap(hint: Any) -> tuple[type, list[Meta]]:
    """The base type and every ``Meta`` of ``Annotated[T, ...] | None``."""
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not NoneType]
        if len(options) != 1:
            raise TypeError(f"a signal must be one type or None, not {hint!r}")
        hint = options[0]
    metas: list[Meta] = []
    while typing.get_origin(hint) is Annotated:
        metas.extend(m for m in hint.__metadata__ if isinstance(m, Meta))
        hint = hint.__origin__
    return hint, metas


def signals_of(struct: type) -> tuple[Signal, ...]:
    """The signals declared on a msgspec struct (``Sample``), in field order: every field
    whose annotation includes :func:`signal`."""
    hints = typing.get_type_hints(struct, include_extras=True)
    found = []
    for name in struct.__struct_fields__:  # type: ignore[attr-defined]
        base, metas = _unwrap(hints[name])
        info = next((m for m in metas if m.extra and _SOURCE in m.extra), None)
        if info is None:
            continue
        if base not in _KINDS:
            raise TypeError(f"signal {name}: type {base!r} is not one of float, int, bool")
        bounds: dict[str, float] = {}
        for m in metas:
            bounds.update({k: v for k in ("ge", "le") if (v := getattr(m, k)) is not None})
        assert info.extra is not None
        assert info.title is not None
        assert info.description is not None
        found.append(
            Signal(
                name=name,
                kind=base,
                label=info.title,
                unit=info.extra[_UNIT],
                source=info.extra[_SOURCE],
                description=info.description,
                **bounds,
            )
        )
    return tuple(found)


def format_value(sig: Signal, value: Any) -> str:
    """A value with its unit for humans (``67.1 °C``, ``42%``, ``0x50005``)."""
    if sig.unit == BITS:
        return f"{value:#x}"
    shown = f"{round(value, 2):g}" if isinstance(value, float) else str(value)
    if not sig.unit:
        return shown
    return f"{shown}{sig.unit}" if sig.unit == "%" else f"{shown} {sig.unit}"


def markdown_table(signals: tuple[Signal, ...]) -> str:
    """The README's table of signals (field, type, unit, range, meaning, source)."""
    lines = [
        "| field | type | unit | range | meaning | source on the device |",
        "|---|---|---|---|---|---|",
    ]
    for s in signals:
        lines.append(
            f"| `{s.name}` | {s.kind.__name__} | {s.unit} | {s.range_text} "
            f"| {s.label}: {s.description} | {s.source} |"
        )
    return "\n".join(lines) + "\n"
