"""ServiceNow-style incident *event logs*, pure: parse and rebuild each incident's timeline.

An event log has one row per update of an incident (``number``, ``incident_state``,
``sys_updated_at``, ``opened_at``, ``resolved_at``, ``closed_at``, ``priority``,
``made_sla``, ``category``, ``assignment_group``, ...), ``?`` for an empty value and
day-first dates such as ``29-02-2016 01:16``. :func:`parse_log` checks every row and
returns either the incidents or every problem by line and column; the importer
(``fleetctl tickets import``) and the offline summary (``fleetctl analytics sla``) both
use it, so they agree on what a file means.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from fleet_server.analytics.errors import AnalyticsInputError

REQUIRED = ("number", "incident_state", "sys_updated_at")
DATE_COLUMNS = ("sys_updated_at", "opened_at", "resolved_at", "closed_at")
DEFAULT_DATE_FORMATS = (
    "%d-%m-%Y %H:%M",
    "%d/%m/%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%d/%m/%Y %H:%M:%S",
)
"""Day-first, with ``-`` or ``/``, to the minute or second (times are UTC)."""
EMPTY = ("", "?")
MAX_ERRORS = 100

STATE_MAP = {
    "new": "new",
    "active": "in_progress",
    "in progress": "in_progress",
    "awaiting user info": "pending_customer",
    "awaiting evidence": "pending_customer",
    "on hold": "pending_customer",
    "awaiting vendor": "pending_third_party",
    "awaiting problem": "in_progress",
    "resolved": "resolved",
    "closed": "closed",
    "canceled": "cancelled",
    "cancelled": "cancelled",
}
"""ServiceNow incident states -> ticket states (``-100``, the log's "unknown", keeps the
previous state)."""
UNKNOWN_STATES = ("-100",)
FLAGS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class LogFormatError(AnalyticsInputError):
    """The log has problems; ``errors`` lists ``(line, column, message)``."""

    def __init__(self, errors: list[tuple[int, str, str]], total: int) -> None:
        shown = "; ".join(f"line {ln}, column {col}: {msg}" for ln, col, msg in errors[:5])
        more = f" (and {total - 5} more)" if total > 5 else ""
        super().__init__(f"{total} problem(s) in the event log: {shown}{more}")
        self.errors = errors
        self.total = total


@dataclass(frozen=True)
class LogRow:
    """One parsed row: when, which state (mapped, None = unknown), the SLA flag."""

    line: int
    at: float
    raw_state: str
    state: str | None
    made_sla: bool | None
    fields: dict[str, str]


@dataclass
class Incident:
    """One incident rebuilt from its rows (in log order: update time, then mod count)."""

    number: str
    rows: list[LogRow] = field(default_factory=list)
    opened_at: float | None = None
    resolved_at: float | None = None
    closed_at: float | None = None

    @property
    def last(self) -> LogRow:
        """The latest row."""
        return self.rows[-1]

    def value(self, column: str) -> str | None:
        """The latest non-empty value of ``column``."""
        for row in reversed(self.rows):
            v = row.fields.get(column)
            if v not in (None, *EMPTY):
                return v
        return None

    @property
    def priority(self) -> str:
        """``1`` from ``1 - Critical`` (``?`` when the log has none)."""
        raw = self.value("priority")
        return raw.split("-")[0].strip() if raw else "?"

    @property
    def closed(self) -> bool:
        """Closed by the log: last state ``Closed`` or a closing time."""
        return self.last.state == "closed" or self.closed_at is not None

    @property
    def made_sla(self) -> bool | None:
        """The log's own SLA flag at the end."""
        return self.last.made_sla

    @property
    def breached_at(self) -> float | None:
        """When the flag turned from met to breached (the first row if it starts so)."""
        before: bool | None = None
        for row in self.rows:
            if row.made_sla is False and before is not False:
                return row.at
            if row.made_sla is not None:
                before = row.made_sla
        return None

    @property
    def hours_to_resolve(self) -> float | None:
        """Opening to resolution (or closing) in hours; None if unresolved or negative."""
        end = self.resolved_at if self.resolved_at is not None else self.closed_at
        if end is None or self.opened_at is None or end < self.opened_at:
            return None
        return (end - self.opened_at) / 3600.0

    def timeline(self) -> list[tuple[float, str]]:
        """``(at, ticket state)`` changes, with a ``reopened`` step wherever a resolved or
        closed incident becomes active again."""
        out: list[tuple[float, str]] = []
        current: str | None = None
        for row in self.rows:
            if row.state is None or row.state == current:
                continue
            if current in ("resolved", "closed") and row.state not in ("resolved", "closed"):
                out.append((row.at, "reopened"))
            out.append((row.at, row.state))
            current = row.state
        return out


_DAY_FIRST = re.compile(r"(\d{1,2})([-/])(\d{1,2})\2(\d{4}) (\d{1,2}):(\d{2})(?::(\d{2}))?")


@lru_cache(maxsize=262_144)
def _parse_date(text: str, formats: tuple[str, ...]) -> float:
    """Epoch seconds (UTC) of ``text`` in the first format that fits (cached: a log
    repeats the same minutes many times; the default day-first formats take a fast
    path that checks the same fields)."""
    if formats == DEFAULT_DATE_FORMATS and (m := _DAY_FIRST.fullmatch(text)):
        d, _sep, mo, y, h, mi, sec = m.groups()
        try:
            return datetime(
                int(y), int(mo), int(d), int(h), int(mi), int(sec or 0), tzinfo=UTC
            ).timestamp()
        except ValueError:
            pass  # e.g. 30-02-2016: strptime below gives the error message
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise ValueError(
        f"{text!r} is not a date like {datetime(2016, 2, 29, 1, 16).strftime(formats[0])}"
    )


def parse_log(text: str | Iterable[str], *, date_format: str | None = None) -> list[Incident]:
    """Every incident of the log, in order of first appearance; raises
    :class:`LogFormatError` listing every problem (line and column) if there is any."""
    formats = (date_format,) if date_format else DEFAULT_DATE_FORMATS
    lines = io.StringIO(text) if isinstance(text, str) else text
    reader = csv.reader(lines)
    errors: list[tuple[int, str, str]] = []
    total = 0

    def err(line: int, col: str, msg: str) -> None:
        nonlocal total
        total += 1
        if len(errors) < MAX_ERRORS:
            errors.append((line, col, msg))

    try:
        header = [h.strip().lstrip("\ufeff").lower() for h in next(reader)]
    except StopIteration:
        raise LogFormatError([(1, "-", "the file is empty")], 1) from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise LogFormatError([(1, c, "required column missing") for c in missing], len(missing))
    incidents: dict[str, Incident] = {}
    order: dict[str, list[tuple[float, int, int, LogRow]]] = {}
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            err(line, "-", f"{len(values)} fields, the header has {len(header)}")
            continue
        row = {h: v.strip() for h, v in zip(header, values, strict=True)}
        number = row["number"]
        if number in EMPTY:
            err(line, "number", "empty")
            continue
        dates: dict[str, float | None] = {}
        for col in DATE_COLUMNS:
            raw = row.get(col, "?")
            if raw in EMPTY:
                dates[col] = None
                continue
            try:
                dates[col] = _parse_date(raw, formats)
            except ValueError as exc:
                err(line, col, str(exc))
                dates[col] = None
        if dates["sys_updated_at"] is None and row["sys_updated_at"] in EMPTY:
            err(line, "sys_updated_at", "empty")
        raw_state = row["incident_state"]
        state = STATE_MAP.get(raw_state.lower())
        if state is None and raw_state not in UNKNOWN_STATES:
            err(line, "incident_state", f"unknown state {raw_state!r}")
        flag_raw = row.get("made_sla", "?").lower()
        flag = FLAGS.get(flag_raw)
        if flag is None and flag_raw not in EMPTY:
            err(line, "made_sla", f"{flag_raw!r} is not true or false")
        mods = row.get("sys_mod_count", "")
        if mods not in EMPTY and not mods.isdigit():
            err(line, "sys_mod_count", f"{mods!r} is not a count")
        if dates["sys_updated_at"] is None:
            continue
        parsed = LogRow(line, dates["sys_updated_at"], raw_state, state, flag, row)
        inc = incidents.setdefault(number, Incident(number))
        for col, attr in (
            ("opened_at", "opened_at"),
            ("resolved_at", "resolved_at"),
            ("closed_at", "closed_at"),
        ):
            if dates[col] is not None:
                setattr(inc, attr, dates[col])
        key = int(mods) if mods.isdigit() else 0
        order.setdefault(number, []).append((parsed.at, key, line, parsed))
    if total:
        raise LogFormatError(errors, total)
    for number, rows in order.items():
        inc = incidents[number]
        inc.rows = [r for *_, r in sorted(rows, key=lambda x: x[:3])]
        if inc.opened_at is None:
            inc.opened_at = inc.rows[0].at
    return list(incidents.values())
