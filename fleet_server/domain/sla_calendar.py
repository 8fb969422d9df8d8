"""Business calendars for SLA clocks, pure: working hours per weekday in a time zone,
minus holidays, or around the clock.

A calendar answers two questions, both in real seconds (UTC epoch arithmetic):

* :meth:`Calendar.working_seconds` -- how much working time lies between two instants;
* :meth:`Calendar.add_working` -- the instant at which a given amount of working time
  has passed after a start.

Working hours are local wall-clock intervals (``09:00-17:00``) of a ``zoneinfo`` zone; each
interval is turned into UTC instants day by day, so a working day that spans a daylight
saving change is as long as it really is (a 00:00-24:00 day is 23 h in spring and 25 h in
autumn). Holidays are local dates: listed explicitly and/or a country's public holidays
from the ``holidays`` package. A ``24x7`` calendar counts every second.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleet_server.errors import InvalidInputError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_SEARCH_DAYS = 3700
""":meth:`Calendar.add_working` gives up after ten years of calendar (a calendar that has
working hours always finds them well before)."""


def _parse_time(text: str, what: str) -> time | None:
    """``HH:MM`` (``24:00`` = end of day, returned as None)."""
    try:
        hh, mm = text.strip().split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise InvalidInputError("invalid_calendar", f"{what}: {text!r} is not HH:MM") from None
    if (h, m) == (24, 0):
        return None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise InvalidInputError("invalid_calendar", f"{what}: {text!r} is not a time of day")
    return time(h, m)


def parse_intervals(spec: str | Sequence[str], what: str) -> tuple[tuple[time, time | None], ...]:
    """``"09:00-12:00,13:00-17:00"`` (or a list of ``"a-b"``) as sorted, non-overlapping
    ``(start, end)`` local times; ``end`` None means midnight at the end of the day."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[tuple[time, time | None]] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        a, sep, b = part.partition("-")
        start, end = _parse_time(a, what), _parse_time(b, what) if sep else None
        if start is None or not sep:
            raise InvalidInputError("invalid_calendar", f"{what}: {part!r} is not HH:MM-HH:MM")
        if end is not None and end <= start:
            raise InvalidInputError("invalid_calendar", f"{what}: {part!r} ends before it starts")
        out.append((start, end))
    out.sort()
    for (_, e1), (s2, _) in itertools.pairwise(out):
        if e1 is None or e1 > s2:
            raise InvalidInputError("invalid_calendar", f"{what}: intervals overlap")
    return tuple(out)


@dataclass(frozen=True)
class Calendar:
    """Working time: ``hours[weekday]`` local intervals in ``tz`` (0 = Monday), except on
    ``holidays``; or every second when ``always`` (24x7)."""

    name: str
    tz: str = "UTC"
    hours: Mapping[int, tuple[tuple[time, time | None], ...]] = field(default_factory=dict)
    holidays: frozenset[date] = frozenset()
    always: bool = False

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError(
                "invalid_calendar", f"calendar {self.name}: unknown time zone {self.tz!r}"
            ) from None
        if not self.always and not any(self.hours.get(d) for d in range(7)):
            raise InvalidInputError(
                "invalid_calendar", f"calendar {self.name}: no working hours on any weekday"
            )

    @property
    def zone(self) -> ZoneInfo:
        """The calendar's time zone."""
        return ZoneInfo(self.tz)

    def _day_spans(self, day: date) -> list[tuple[float, float]]:
        """Working spans of one local date as UTC epoch pairs (empty on holidays)."""
        if day in self.holidays:
            return []
        zone = self.zone
        spans = []
        for start, end in self.hours.get(day.weekday(), ()):
            a = datetime.combine(day, start, zone)
            b = (
                datetime.combine(day + timedelta(days=1), time(0), zone)
                if end is None
                else datetime.combine(day, end, zone)
            )
            # Wall times that do not exist (spring gap) fold forward; subtracting in UTC
            # gives the real length.
            ua, ub = a.astimezone(UTC).timestamp(), b.astimezone(UTC).timestamp()
            if ub > ua:
                spans.append((ua, ub))
        return spans

    def spans(self, start: float, end: float) -> Iterator[tuple[float, float]]:
        """Working spans overlapping ``[start, end)``, clipped to it, in order."""
        if end <= start:
            return
        if self.always:
            yield start, end
            return
        zone = self.zone
        day = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end, zone).date()
        while day <= last:
            for a, b in self._day_spans(day):
                lo, hi = max(a, start), min(b, end)
                if hi > lo:
                    yield lo, hi
            day += timedelta(days=1)

    def working_seconds(self, start: float, end: float) -> float:
        """Working seconds in ``[start, end)`` (0 when ``end <= start``)."""
        return sum(b - a for a, b in self.spans(start, end))

    def add_working(self, start: float, seconds: float) -> float:
        """The instant at which ``seconds`` of working time have passed after ``start``
        (``start`` itself for 0; the next working instant counts from there)."""
        if seconds <= 0:
            return start
        if self.always:
            return start + seconds
        zone = self.zone
        day = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
        left = seconds
        for _ in range(MAX_SEARCH_DAYS):
            for a, b in self._day_spans(day):
                lo = max(a, start)
                if b <= lo:
                    continue
                if b - lo >= left:
                    return lo + left
                left -= b - lo
            day += timedelta(days=1)
        return math.inf

    def is_working(self, at: float) -> bool:
        """True when ``at`` falls in working time."""
        return self.working_seconds(at, at + 1e-3) > 0


ALWAYS = Calendar("24x7", always=True)
"""Around the clock: every second counts."""


def _holiday_dates(
    dates: Iterable[str], country: str | None, subdivision: str | None, years: range
) -> frozenset[date]:
    out: set[date] = set()
    for text in dates:
        try:
            out.add(date.fromisoformat(text))
        except ValueError:
            raise InvalidInputError(
                "invalid_calendar", f"holiday {text!r} is not a YYYY-MM-DD date"
            ) from None
    if country:
        out.update(_public_holidays(country, subdivision, years.start, years.stop))
    return frozenset(out)


@lru_cache(maxsize=32)
def _public_holidays(
    country: str, subdivision: str | None, first: int, stop: int
) -> frozenset[date]:
    """A country's public holidays from the ``holidays`` package (not home-made tables);
    cached, computing 30 years of them takes a moment."""
    import holidays as holiday_tables

    try:
        table = holiday_tables.country_holidays(
            country, subdiv=subdivision, years=range(first, stop)
        )
    except NotImplementedError:
        raise InvalidInputError(
            "invalid_calendar", f"no public holidays known for {country!r}/{subdivision!r}"
        ) from None
    return frozenset(table.keys())


def calendar_from_config(name: str, spec: Mapping[str, object]) -> Calendar:
    """A calendar from its configuration: ``tz``, ``hours`` (``{"mon": "09:00-17:00", ...}``
    or ``"24x7"``), ``holidays`` (``["2026-12-25"]``), ``country`` / ``subdivision`` for
    public holidays (years 2010-2040)."""
    hours_spec = spec.get("hours", "24x7")
    tz = str(spec.get("tz", "UTC"))
    if hours_spec == "24x7":
        return Calendar(name, tz=tz, always=True)
    if not isinstance(hours_spec, Mapping):
        raise InvalidInputError("invalid_calendar", f"calendar {name}: hours must be a table")
    hours: dict[int, tuple[tuple[time, time | None], ...]] = {}
    for key, value in hours_spec.items():
        day = str(key).lower()[:3]
        if day not in WEEKDAYS:
            raise InvalidInputError("invalid_calendar", f"calendar {name}: unknown day {key!r}")
        hours[WEEKDAYS.index(day)] = parse_intervals(value, f"calendar {name}.{day}")  # type: ignore[arg-type]
    listed = spec.get("holidays", [])
    if not isinstance(listed, list | tuple):
        raise InvalidInputError("invalid_calendar", f"calendar {name}: holidays must be a list")
    country = spec.get("country")
    sub = spec.get("subdivision")
    days = _holiday_dates(
        [str(d) for d in listed],
        str(country) if country else None,
        str(sub) if sub else None,
        range(2010, 2041),
    )
    return Calendar(name, tz=tz, hours=hours, holidays=days)
