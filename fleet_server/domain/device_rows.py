"""Validation of device registry rows, from the factory CSV or the API.

The factory CSV has a header row; ``device_id`` is required, every other column optional:
``serial, model, hw_revision, batch, production_date, activation_date, region, timezone,
owner, channel, tags`` (``hardware_revision`` is accepted for ``hw_revision``; ``timezone``
is an IANA name such as ``Europe/Berlin``). Dates are ``YYYY-MM-DD``; ``channel`` is
``production`` or ``pre-production``; ``tags`` are separated by ``;``. Validation collects
every error with its line and column so the whole file can be fixed in one pass.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from protocol import is_valid_device_id

RESERVED_PREFIX = "svc-"
"""Certificate names of fleet services (``svc-ingest-1``); the broker grants them every
device's topics, so no device may be registered under such a name."""

CHANNELS = ("production", "pre-production")
COLUMNS = (
    "device_id",
    "serial",
    "model",
    "hw_revision",
    "batch",
    "production_date",
    "activation_date",
    "region",
    "timezone",
    "owner",
    "channel",
    "tags",
)
ALIASES = {"hardware_revision": "hw_revision"}
"""Other names accepted for a column (the simulator's factory CSV says hardware_revision)."""
_TEXT_LIMITS = {
    "serial": 128,
    "model": 128,
    "hw_revision": 64,
    "batch": 128,
    "region": 64,
    "owner": 256,
}
MAX_ROWS = 100_000


@dataclass(frozen=True)
class RowError:
    """One problem in an input row: ``line`` is the 1-based CSV line (header = 1)."""

    line: int
    column: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for API error details."""
        return {"line": self.line, "column": self.column, "message": self.message}


@dataclass
class ParsedCsv:
    """Valid rows (field name -> value) and the errors found."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _valid_zone(name: str) -> bool:
    if not name or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _parse_date(value: str) -> date:
    return date.fromisoformat(value)


def validate_fields(
    raw: dict[str, Any], *, partial: bool = False
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Normalise one row's fields; return the clean values and ``(column, message)`` errors.

    With ``partial`` (a PATCH), ``device_id`` is not required.
    """
    clean: dict[str, Any] = {}
    errors: list[tuple[str, str]] = []
    for key, value in raw.items():
        key = ALIASES.get(key, key)
        if key not in COLUMNS:
            errors.append((key, f"unknown field {key!r}"))
            continue
        if isinstance(value, str):
            value = value.strip()
            if value == "" and key != "device_id":
                value = None
        if key == "device_id":
            if not isinstance(value, str) or not is_valid_device_id(value):
                errors.append((key, "must be 1-64 letters, digits, '.', '_' or '-'"))
            elif value.startswith(RESERVED_PREFIX):
                errors.append(
                    (key, f"ids starting with {RESERVED_PREFIX!r} are reserved for services")
                )
            else:
                clean[key] = value
        elif value is None:
            clean[key] = [] if key == "tags" else None
        elif key in ("production_date", "activation_date"):
            if isinstance(value, date):
                clean[key] = value
                continue
            try:
                clean[key] = _parse_date(str(value))
            except ValueError:
                errors.append((key, f"{value!r} is not a date (YYYY-MM-DD)"))
        elif key == "timezone":
            if not _valid_zone(str(value)):
                errors.append((key, f"{value!r} is not an IANA time zone (e.g. Europe/Berlin)"))
            else:
                clean[key] = str(value)
        elif key == "channel":
            if value not in CHANNELS:
                errors.append((key, f"{value!r} is not one of {', '.join(CHANNELS)}"))
            else:
                clean[key] = value
        elif key == "tags":
            tags = value if isinstance(value, list) else str(value).split(";")
            tags = [str(t).strip() for t in tags if str(t).strip()]
            if any(len(t) > 64 for t in tags) or len(tags) > 32:
                errors.append((key, "at most 32 tags of at most 64 characters"))
            else:
                clean[key] = sorted(set(tags))
        else:
            text = str(value)
            if len(text) > _TEXT_LIMITS[key]:
                errors.append((key, f"longer than {_TEXT_LIMITS[key]} characters"))
            else:
                clean[key] = text
    if not partial and "device_id" not in raw:
        errors.append(("device_id", "is required"))
    if (
        clean.get("production_date")
        and clean.get("activation_date")
        and clean["activation_date"] < clean["production_date"]
    ):
        errors.append(("activation_date", "is before production_date"))
    return clean, errors


def parse_device_csv(text: str) -> ParsedCsv:
    """Parse and validate a factory CSV; nothing is stored here."""
    result = ParsedCsv()
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if not header:
        result.errors.append(RowError(1, None, "the file is empty: expected a header row"))
        return result
    unknown = [h for h in header if ALIASES.get(h, h) not in COLUMNS]
    if unknown:
        result.errors.append(
            RowError(
                1, None, f"unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}"
            )
        )
        return result
    if "device_id" not in header:
        result.errors.append(RowError(1, "device_id", "the header has no device_id column"))
        return result
    seen_ids: dict[str, int] = {}
    seen_serials: dict[str, int] = {}
    for index, raw in enumerate(reader):
        line = reader.line_num
        if index >= MAX_ROWS:
            result.errors.append(RowError(line, None, f"more than {MAX_ROWS} rows"))
            break
        if None in raw:
            result.errors.append(RowError(line, None, "more values than header columns"))
            continue
        clean, errors = validate_fields({k: v for k, v in raw.items() if v is not None})
        for column, message in errors:
            result.errors.append(RowError(line, column, message))
        duplicate = False
        for column, seen in (("device_id", seen_ids), ("serial", seen_serials)):
            value = clean.get(column)
            if not value:
                continue
            if value in seen:
                result.errors.append(
                    RowError(line, column, f"{value!r} repeats line {seen[value]}")
                )
                duplicate = True
            else:
                seen[value] = line
        if errors or duplicate:
            continue
        clean["_line"] = line
        result.rows.append(clean)
    return result
