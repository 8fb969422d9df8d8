"""Replay a recorded signal through the agent's fault engine, exactly as a device would.

:func:`read_signal_csv` turns a CSV column into :class:`protocol.Sample` objects (time
column as ISO 8601 or unix seconds; clear errors naming the line and column);
:func:`replay_samples` runs them through a :class:`~agent.core.faults.FaultEngine` built
like the agent's (every built-in rule from :func:`agent.core.rules.build_rules`, plus an
:class:`~agent.core.adaptive.AdaptiveRule` on the signal with its default parameters) and
returns every raise and clear with the time of the sample that caused it.

Pure apart from reading the file: the clock is the samples' timestamps.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.adaptive import AdaptiveRule
from agent.core.fault_types import FaultChange
from agent.core.faults import SIGNALS, FaultEngine
from agent.core.rules import build_rules
from protocol import Sample

INT_SIGNALS = frozenset({"disk_io_errors", "throttled", "net_rx_bytes", "net_tx_bytes"})
BOOL_SIGNALS = frozenset({"undervoltage", "clock_synced"})
_MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
MAX_ERRORS_SHOWN = 20


class ReplayError(ValueError):
    """The input cannot be replayed; ``errors`` lists each problem (line and column)."""

    def __init__(self, errors: Sequence[str], source: str = "input") -> None:
        self.errors = list(errors)
        self.source = source
        shown = "\n".join(f"  {e}" for e in self.errors[:MAX_ERRORS_SHOWN])
        more = len(self.errors) - MAX_ERRORS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{source}: {len(self.errors)} problem(s):\n{shown}{tail}")

    def one_line(self) -> str:
        """The first problem on one line, naming the file (and how many more there are)."""
        more = len(self.errors) - 1
        tail = f" (and {more} more problem(s))" if more > 0 else ""
        return f"{self.source}: {self.errors[0] if self.errors else 'unreadable'}{tail}"


@dataclass(frozen=True, slots=True)
class Row:
    """One usable input row: its line number, raw time text, unix time and value."""

    line: int
    time_text: str
    ts: float
    value: float | None


@dataclass
class Signal:
    """A recorded signal read from a CSV file."""

    name: str
    rows: list[Row]
    time_format: str
    """``unix`` or ``iso``: how the input wrote its timestamps."""
    skipped: list[str] = field(default_factory=list)
    """Problems in rows that were skipped (with ``skip_bad``)."""
    reordered: bool = False
    """True when the rows were not in time order and had to be sorted."""


def parse_time(text: str) -> tuple[float, str]:
    """Unix seconds from ISO 8601 (a date-time without offset is UTC) or unix seconds.

    Returns ``(seconds, "iso" | "unix")``; raises ``ValueError`` naming the accepted forms.
    """
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if math.isfinite(value) and 0 <= value <= 1e11:
            return value, "unix"
        raise ValueError(f"{raw!r} is not a unix time in seconds")
    try:
        when = dt.datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise ValueError(
            f"{raw!r} is not a time (expected ISO 8601 like 2024-03-01T12:00:00Z or unix seconds)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp(), "iso"


def parse_value(text: str, signal: str) -> float | None:
    """The numeric value of a cell; ``None`` for an empty or NaN cell (a gap)."""
    raw = text.strip()
    low = raw.lower()
    if low in _MISSING:
        return None
    if signal in BOOL_SIGNALS:
        if low in _TRUE:
            return 1.0
        if low in _FALSE:
            return 0.0
        raise ValueError(f"{raw!r} is not a boolean (true/false, 1/0)")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number") from None
    if math.isnan(value):
        return None
    if not math.isfinite(value) or abs(value) > 1e15:
        raise ValueError(f"{raw!r} is out of range")
    return value


@dataclass(frozen=True, slots=True)
class TableRow:
    """One usable input row with several value columns (None: a gap in that column)."""

    line: int
    time_text: str
    ts: float
    values: tuple[float | None, ...]


@dataclass
class Table:
    """Several recorded signals read from one CSV file (one value column each)."""

    signals: tuple[str, ...]
    rows: list[TableRow]
    time_format: str
    skipped: list[str] = field(default_factory=list)
    reordered: bool = False


def read_signal_csv(
    path: str | Path,
    *,
    time_col: str,
    value_col: str,
    signal: str | None = None,
    skip_bad: bool = False,
    delimiter: str | None = None,
) -> Signal:
    """Read one signal from a CSV file with a header row (see :func:`read_table_csv`)."""
    table = read_table_csv(
        path,
        time_col=time_col,
        value_cols=[value_col],
        signals=[signal or value_col],
        skip_bad=skip_bad,
        delimiter=delimiter,
    )
    rows = [Row(r.line, r.time_text, r.ts, r.values[0]) for r in table.rows]
    return Signal(
        table.signals[0],
        rows,
        table.time_format,
        skipped=table.skipped,
        reordered=table.reordered,
    )


def read_table_csv(
    path: str | Path,
    *,
    time_col: str,
    value_cols: Sequence[str],
    signals: Sequence[str] | None = None,
    skip_bad: bool = False,
    delimiter: str | None = None,
) -> Table:
    """Read a time column and one or more value columns from a CSV file with a header row.

    Every bad cell is reported as ``line N, column C: problem``; with ``skip_bad`` the
    bad rows are skipped (and listed in :attr:`Table.skipped`) instead of failing.
    Empty and NaN values are gaps (the rules see no observation). Rows out of time order
    are sorted (stable), as the agent would have seen them. ``signals`` names the
    signal each value column feeds (default: the column names).
    """
    path = Path(path)
    source = str(path)
    names = tuple(signals or value_cols)
    if len(names) != len(value_cols) or not value_cols:
        raise ValueError("give one signal name per value column")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ReplayError([f"cannot read: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError:
        raise ReplayError(["not UTF-8 text"], source) from None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ReplayError(["the file is empty: expected a header row"], source) from None
    missing = [c for c in (time_col, *value_cols) if c not in header]
    if missing:
        raise ReplayError(
            [
                f"line 1: no column named {c!r} (columns: {', '.join(header) or 'none'})"
                for c in missing
            ],
            source,
        )
    ti = header.index(time_col)
    vis = [header.index(c) for c in value_cols]
    width = max(ti, *vis)
    rows: list[TableRow] = []
    errors: list[str] = []
    formats: set[str] = set()
    for line_no, cells in enumerate(reader, start=2):
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) <= width:
            errors.append(f"line {line_no}: {len(cells)} column(s), expected {len(header)}")
            continue
        try:
            ts, fmt = parse_time(cells[ti])
        except ValueError as exc:
            errors.append(f"line {line_no}, column {time_col}: {exc}")
            continue
        values: list[float | None] = []
        for col, vi, name in zip(value_cols, vis, names, strict=True):
            try:
                values.append(parse_value(cells[vi], name))
            except ValueError as exc:
                errors.append(f"line {line_no}, column {col}: {exc}")
                break
        else:
            formats.add(fmt)
            rows.append(TableRow(line_no, cells[ti].strip(), ts, tuple(values)))
    if errors and not skip_bad:
        raise ReplayError(errors, source)
    if not rows:
        raise ReplayError(["no data rows with a readable time"], source)
    reordered = any(b.ts < a.ts for a, b in itertools.pairwise(rows))
    if reordered:
        rows.sort(key=lambda r: r.ts)
    fmt = "iso" if formats == {"iso"} else "unix" if formats == {"unix"} else "mixed"
    return Table(names, rows, fmt, skipped=errors, reordered=reordered)


def sample_for(signal: str, ts: float, value: float | None) -> Sample:
    """A sample carrying only ``signal`` (a Sample field, else a ``custom`` key)."""
    return sample_with(ts, {signal: value})


def sample_with(ts: float, values: Mapping[str, float | None]) -> Sample:
    """A sample carrying ``values`` (Sample fields by name, other names in ``custom``)."""
    fields: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for signal, value in values.items():
        if value is None:
            continue
        if signal not in SIGNALS:
            custom[signal] = value
        elif signal in BOOL_SIGNALS:
            fields[signal] = bool(value)
        elif signal in INT_SIGNALS:
            fields[signal] = int(value)
        else:
            fields[signal] = value
    return Sample(ts=ts, custom=custom, **fields) if custom else Sample(ts=ts, **fields)


@dataclass(frozen=True, slots=True)
class Alarm:
    """One raise or clear, with the input row that caused it."""

    event: str
    """``raised`` or ``cleared``."""
    code: str
    severity: str
    ts: float
    time_text: str
    line: int
    value: float | None
    threshold: float | None
    message: str
    drivers: tuple[tuple[str, float], ...] = ()
    """For a multivariate raise: the signals that drove it and their shares of T²."""

    @property
    def iso(self) -> str:
        """The time as ISO 8601 UTC."""
        return dt.datetime.fromtimestamp(self.ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (one line of ``fleet-sim replay --json``)."""
        return {
            "event": self.event,
            "code": self.code,
            "severity": self.severity,
            "time": self.time_text,
            "time_iso": self.iso,
            "ts": self.ts,
            "line": self.line,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "drivers": [{"signal": name, "share": round(share, 4)} for name, share in self.drivers],
        }


def replay_rules(signal: str, faults: Mapping[str, Any] | None = None) -> FaultEngine:
    """The agent's rule set (built-ins, tuned by ``faults``) plus an adaptive rule on
    ``signal`` with the agent's default parameters (unless ``faults`` already has one)."""
    config = dict(faults or {})
    rules = build_rules(config)
    engine = FaultEngine(rules)
    if not any(isinstance(r, AdaptiveRule) and r.signal == signal for r in rules):
        engine.add(AdaptiveRule(signal))
    return engine


def replay_samples(
    rows: Iterable[Row], signal: str, engine: FaultEngine | None = None
) -> list[Alarm]:
    """Feed every row to the fault engine in order; return the raises and clears."""
    engine = engine or replay_rules(signal)
    alarms: list[Alarm] = []
    for row in rows:
        sample = sample_for(signal, row.ts, row.value)
        alarms.extend(alarms_of(engine.update(sample), row.time_text, row.line))
    return alarms


def alarms_of(changes: Iterable[FaultChange], time_text: str, line: int) -> list[Alarm]:
    """The engine's changes for one input row as :class:`Alarm` objects."""
    return [
        Alarm(
            event="raised" if change.raised else "cleared",
            code=change.code,
            severity=change.severity.value,
            ts=change.ts,
            time_text=time_text,
            line=line,
            value=change.value,
            threshold=change.threshold,
            message=change.message,
            drivers=change.drivers,
        )
        for change in changes
    ]


__all__ = [
    "Alarm",
    "ReplayError",
    "Row",
    "Signal",
    "Table",
    "TableRow",
    "alarms_of",
    "parse_time",
    "parse_value",
    "read_signal_csv",
    "read_table_csv",
    "replay_rules",
    "replay_samples",
    "sample_for",
    "sample_with",
]
