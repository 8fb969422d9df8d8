"""Scenario TOML values: the error collector and the converters for single values.

:class:`Checker` reads nested TOML tables and collects every problem as ``key.path:
message`` instead of stopping at the first; the ``as_*`` converters turn one raw TOML value
into a checked Python value or raise ``ValueError`` with a message for the user.
:func:`parse_duration` is public (the CLI parses ``--duration`` with it).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from simulator.scenario_model import Dist

T = TypeVar("T")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"90s"``, ``"15m"``, ``"1h30m"``, ``"2d"``.

    Raises ``ValueError`` with the accepted forms for anything else (negatives too).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a duration >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, total = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            total += float(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if text and pos == len(text):
            return total
    raise ValueError(
        f"expected a duration (seconds, or like '90s', '15m', '1h30m', '2d'), got {value!r}"
    )


class Checker:
    """Collects ``path: message`` errors while reading nested TOML tables."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def err(self, path: str, message: str) -> None:
        """Record one problem at key ``path``."""
        self.errors.append(f"{path}: {message}")

    def table(self, value: object, path: str, allowed: Iterable[str]) -> dict[str, Any]:
        """``value`` as a table, each key not in ``allowed`` reported; {} if not a table."""
        if not isinstance(value, dict):
            self.err(path, f"expected a table, got {type(value).__name__}")
            return {}
        allowed = set(allowed)
        for key in value:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.err(join_key(path, key), f"unknown key (allowed: {hint})")
        return value

    def get(
        self,
        tbl: dict[str, Any],
        path: str,
        key: str,
        conv: Callable[[object], T],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T | None:
        """``tbl[key]`` converted by ``conv``; ``default`` (and a problem) when absent or bad."""
        where = join_key(path, key)
        if key not in tbl:
            if required:
                self.err(where, "required")
            return default
        try:
            return conv(tbl[key])
        except (ValueError, TypeError) as exc:
            self.err(where, str(exc))
            return default

    def array(self, tbl: dict[str, Any], path: str, key: str) -> list[Any]:
        """``tbl[key]`` as an array ([] when absent; reported when not an array)."""
        value = tbl.get(key, [])
        if not isinstance(value, list):
            self.err(join_key(path, key), f"expected an array, got {type(value).__name__}")
            return []
        return value


def join_key(path: str, key: str) -> str:
    """The key path of ``key`` inside the table at ``path``."""
    return f"{path}.{key}" if path else key


def as_number(lo: float | None = None, hi: float | None = None, *, integer: bool = False):
    """A converter accepting a finite number (an integer if asked) within ``lo``..``hi``."""

    def conv(value: object) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if integer and not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        if lo is not None and value < lo:
            raise ValueError(f"must be >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            raise ValueError(f"must be <= {hi}, got {value!r}")
        return value

    return conv


def as_share(value: object) -> float:
    """A fraction of the fleet, in (0, 1]."""
    v = float(as_number(0.0, 1.0)(value))
    if v <= 0:
        raise ValueError(f"must be in (0, 1], got {value!r}")
    return v


def as_text(value: object) -> str:
    """A string."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def as_name(value: object) -> str:
    """A name of letters, digits, ``.``, ``_``, ``-`` (at most 64 characters)."""
    text = as_text(value)
    if not _NAME_RE.match(text):
        raise ValueError(f"expected a name of letters, digits, '.', '_', '-' (got {text!r})")
    return text


def as_date(value: object) -> dt.date:
    """A date (TOML date, date-time or ``YYYY-MM-DD`` string)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"expected a date like 2025-11-03, got {value!r}")


def as_start(value: object) -> float:
    """Unix seconds from a date-time with offset, a date (midnight UTC) or a number."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("the start time needs a UTC offset, e.g. 2026-01-05T00:00:00Z")
        return value.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise ValueError(f"expected a date-time with offset or unix seconds, got {value!r}")


def as_speed(value: object) -> float | None:
    """A real-time factor > 0, or None for ``"max"`` (as fast as possible)."""
    if isinstance(value, str) and value.strip().lower() in ("max", "asap", "fastest"):
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f'expected a real-time factor > 0 or "max", got {value!r}')


def as_positive_duration(value: object) -> float:
    """A duration (see :func:`parse_duration`) > 0."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return seconds


def as_dist(value: object, *, duration: bool) -> Dist:
    """A ``"low..high"`` range, a ``{weibull_shape, weibull_scale}`` table or one value."""
    conv = parse_duration if duration else as_number(0.0)
    if isinstance(value, str) and ".." in value:
        low, high = (part.strip() for part in value.split("..", 1))
        try:
            a, b = (float(conv(x if duration else float(x))) for x in (low, high))
        except ValueError as exc:
            raise ValueError(f"range {value!r}: {exc}") from None
        if b < a:
            raise ValueError(f"range {value!r}: the upper bound is below the lower one")
        return Dist("uniform", a, b)
    if isinstance(value, dict):
        unknown = set(value) - {"weibull_shape", "weibull_scale"}
        if unknown or len(value) != 2:
            raise ValueError("expected {weibull_shape = k, weibull_scale = ...}")
        shape = float(as_number(0.0)(value["weibull_shape"]))
        scale = float(conv(value["weibull_scale"]))
        if shape <= 0 or scale <= 0:
            raise ValueError("weibull_shape and weibull_scale must be > 0")
        return Dist("weibull", shape, scale)
    v = float(conv(value))
    return Dist("uniform", v, v)


def check_shares(c: Checker, path: str, items: Sequence[Any]) -> None:
    """Report shares not adding up to 1 and duplicate names among ``items``."""
    if items and abs(sum(i.share for i in items) - 1.0) > 1e-6:
        total = sum(i.share for i in items)
        c.err(path, f"shares must add up to 1, they add up to {total:g}")
    names = [i.name for i in items]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.err(path, f"duplicate name {dup!r}")
