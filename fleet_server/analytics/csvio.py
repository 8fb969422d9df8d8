"""CSV readers for analyst exports, with errors that name the file, line and column.

Column names are matched case-insensitively, with spaces and dashes read as underscores,
against a list of common names for each field (e.g. ``time``, ``hours``, ``age`` for the
time to failure). Every reader takes explicit overrides (``time_col=...``) for files that
use other names. A value that cannot be read raises ``CsvInputError`` naming the line (as
counted by a text editor, header = line 1) and the column.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fleet_server.analytics.errors import AnalyticsInputError

TIME_NAMES = (
    "time", "t", "age", "hours", "cycles", "days", "time_to_failure", "ttf", "life",
    "duration", "operating_time", "miles", "km",
)  # fmt: skip
STATUS_NAMES = (
    "failed", "failure", "status", "event", "state", "type", "fs", "censored", "suspended",
    "suspension", "is_censored",
)  # fmt: skip
INVERTED_STATUS = {"censored", "suspended", "suspension", "is_censored"}
COUNT_NAMES = ("count", "qty", "quantity", "n", "number", "weight", "freq", "frequency")
GROUP_NAMES = (
    "group", "batch", "lot", "batch_id", "lot_id", "software_version", "sw_version",
    "version", "firmware", "release", "model", "hw_rev", "hardware_revision", "region",
)  # fmt: skip
EXPOSURE_NAMES = (
    "exposure", "units", "unit_days", "unit_months", "device_days", "device_hours",
    "at_risk", "units_at_risk", "population", "n_units", "installed", "in_service",
)  # fmt: skip
FAILURE_NAMES = ("failures", "claims", "events", "faults", "returns", "failed", "count")
AGE_NAMES = (
    "months_in_service", "mis", "age", "age_months", "month_in_service", "service_month",
    "age_days",
)  # fmt: skip
PERIOD_NAMES = ("period", "calendar_month", "month", "report_month", "date", "week")
RELEASE_NAMES = ("release", "software_version", "sw_version", "version", "firmware")

_FAILED_WORDS = {"1", "true", "yes", "y", "f", "failed", "failure", "fail", "event", "x"}
_CENSORED_WORDS = {
    "0", "false", "no", "n", "s", "c", "censored", "suspended", "suspension", "survived",
    "running", "right", "right_censored", "r", "",
}  # fmt: skip
_NUMERIC_BOOL = {"1", "0", "true", "false", "yes", "no", "y", "n"}


class CsvInputError(AnalyticsInputError):
    """A CSV file that cannot be read as the analysis needs it."""


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@dataclass(frozen=True)
class CsvTable:
    """A CSV file read into rows, each with its line number."""

    path: str
    header: tuple[str, ...]
    rows: tuple[tuple[int, list[str]], ...]

    def cells(self, col: str) -> list[tuple[int, str]]:
        """(line number, stripped text) of every row for one column."""
        i = self.header.index(col)
        return [(line, record[i].strip()) for line, record in self.rows]

    def column(self, override: str | None, names: Sequence[str], what: str) -> str | None:
        """The header name to use for ``what``: the override, else the first common name."""
        normalised = {_norm(h): h for h in self.header}
        if override is not None:
            if _norm(override) not in normalised:
                raise CsvInputError(
                    f"{self.path}: no column {override!r} (columns: {', '.join(self.header)})"
                )
            return normalised[_norm(override)]
        for name in names:
            if name in normalised:
                return normalised[name]
        return None

    def require(self, override: str | None, names: Sequence[str], what: str, flag: str) -> str:
        """Like ``column`` but a missing column is an error that says how to name it."""
        col = self.column(override, names, what)
        if col is None:
            raise CsvInputError(
                f"{self.path}: no column for {what}; looked for {', '.join(names)} "
                f"(columns: {', '.join(self.header)}); name it with {flag}"
            )
        return col

    def numbers(
        self, col: str, *, integer: bool = False, minimum: float | None = None
    ) -> np.ndarray:
        """Parse a numeric column; errors name the line and column."""
        out = np.empty(len(self.rows))
        for i, (line, raw) in enumerate(self.cells(col)):
            try:
                value = float(raw)
            except ValueError:
                raise CsvInputError(
                    f"{self.path} line {line}, column {col!r}: {raw!r} is not a number"
                ) from None
            if not math.isfinite(value):
                raise CsvInputError(
                    f"{self.path} line {line}, column {col!r}: {raw!r} is not finite"
                )
            if integer and value != round(value):
                raise CsvInputError(
                    f"{self.path} line {line}, column {col!r}: {raw!r} is not a whole number"
                )
            if minimum is not None and value < minimum:
                raise CsvInputError(
                    f"{self.path} line {line}, column {col!r}: {raw!r} must be >= {minimum:g}"
                )
            out[i] = value
        return out

    def strings(self, col: str) -> list[str]:
        """A text column; empty cells are an error."""
        out = []
        for line, raw in self.cells(col):
            if not raw:
                raise CsvInputError(f"{self.path} line {line}, column {col!r}: empty value")
            out.append(raw)
        return out


def read_csv(path: str | Path) -> CsvTable:
    """Read a CSV file with a header row; blank lines are skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CsvInputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise CsvInputError(f"{p}: is a directory, not a CSV file") from None
    except UnicodeDecodeError:
        raise CsvInputError(f"{p}: not UTF-8 text") from None
    except OSError as exc:
        raise CsvInputError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel  # type: ignore[assignment]
    reader = csv.reader(text.splitlines(), dialect)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    try:
        for line_no, record in enumerate(reader, start=1):
            if not record or all(not c.strip() for c in record):
                continue
            if header is None:
                header = [c.strip() for c in record]
                if len(set(map(_norm, header))) != len(header):
                    raise CsvInputError(f"{p} line {line_no}: duplicate column names in header")
                continue
            if len(record) != len(header):
                raise CsvInputError(
                    f"{p} line {line_no}: {len(record)} fields, the header has {len(header)}"
                )
            rows.append((line_no, record))
    except csv.Error as exc:
        raise CsvInputError(f"{p}: malformed CSV ({exc})") from None
    if header is None:
        raise CsvInputError(f"{p}: empty file (a header row and data rows are needed)")
    if not rows:
        raise CsvInputError(f"{p}: a header but no data rows")
    return CsvTable(str(p), tuple(header), tuple(rows))


@dataclass(frozen=True)
class LifeData:
    """Times with failed/censored flags and unit counts, for Weibull fits."""

    times: np.ndarray
    failed: np.ndarray
    counts: np.ndarray


def read_life_data(
    path: str | Path,
    *,
    time_col: str | None = None,
    status_col: str | None = None,
    count_col: str | None = None,
) -> LifeData:
    """Read life data: a time column and a failed/censored column (default: all failed).

    Status values: 1/true/yes/F/failed/failure mean failed; 0/false/no/S/C/censored/
    suspended/running mean censored. A column named ``censored`` or ``suspended`` with
    1/0 (true/false) values is read the other way round (1 = censored).
    """
    table = read_csv(path)
    tcol = table.require(time_col, TIME_NAMES, "the time to failure or censoring", "--time-col")
    times = table.numbers(tcol)
    bad = np.flatnonzero(times <= 0)
    if bad.size:
        line = table.rows[int(bad[0])][0]
        raise CsvInputError(f"{table.path} line {line}, column {tcol!r}: times must be > 0")
    scol = table.column(status_col, STATUS_NAMES, "status")
    if scol is None:
        failed = np.ones(times.size, dtype=bool)
    else:
        inverted = _norm(scol) in INVERTED_STATUS
        failed = np.empty(times.size, dtype=bool)
        for i, (line, cell) in enumerate(table.cells(scol)):
            raw = _norm(cell)
            if raw in _FAILED_WORDS and not (inverted and raw in _NUMERIC_BOOL):
                failed[i] = True
            elif raw in _CENSORED_WORDS and not (inverted and raw in _NUMERIC_BOOL):
                failed[i] = False
            elif inverted and raw in _NUMERIC_BOOL:
                failed[i] = raw in {"0", "false", "no", "n"}
            else:
                raise CsvInputError(
                    f"{table.path} line {line}, column {scol!r}: {cell!r} is neither "
                    "failed (1, true, F, failed) nor censored (0, false, S, censored)"
                )
    ccol = table.column(count_col, COUNT_NAMES, "count")
    counts = np.ones(times.size) if ccol is None else table.numbers(ccol, integer=True, minimum=0)
    return LifeData(times, failed, counts)


@dataclass(frozen=True)
class CountData:
    """Group labels, exposure, failures, and optional age and period labels."""

    groups: list[str]
    exposure: np.ndarray
    failures: np.ndarray
    age: list[str] | None
    period: list[str] | None
    group_col: str


def read_counts(
    path: str | Path,
    *,
    group_cols: Sequence[str] | None = None,
    exposure_col: str | None = None,
    failures_col: str | None = None,
    age_col: str | None = None,
    period_col: str | None = None,
    use_age: bool = True,
    use_period: bool = True,
) -> CountData:
    """Read (group, exposure, failures[, age][, period]) rows for claims and rates.

    Several ``group_cols`` are joined with "/" into one label (e.g. model/hw_rev).
    """
    table = read_csv(path)
    if group_cols:
        cols = [table.require(c, (), "group", "--group-col") for c in group_cols]
    else:
        cols = [table.require(None, GROUP_NAMES, "the group (batch, version...)", "--group-col")]
    labels = [table.strings(c) for c in cols]
    groups = ["/".join(parts) for parts in zip(*labels, strict=True)]
    xcol = table.require(
        exposure_col, EXPOSURE_NAMES, "exposure (units or unit-days at risk)", "--exposure-col"
    )
    used = {xcol, *cols}
    fnames = tuple(n for n in FAILURE_NAMES if n not in {_norm(u) for u in used})
    fcol = table.require(failures_col, fnames, "failures (claims)", "--failures-col")
    exposure = table.numbers(xcol, minimum=0)
    failures = table.numbers(fcol, integer=True, minimum=0)
    age = period = None
    if use_age:
        acol = table.column(age_col, AGE_NAMES, "age")
        if acol is not None:
            age = table.strings(acol)
    if use_period:
        pcol = table.column(period_col, PERIOD_NAMES, "period")
        if pcol is not None:
            period = table.strings(pcol)
    for i, (line, _row) in enumerate(table.rows):
        if exposure[i] == 0 and failures[i] > 0:
            raise CsvInputError(
                f"{table.path} line {line}: {int(failures[i])} failures but exposure 0"
            )
    return CountData(groups, exposure, failures, age, period, "/".join(cols))


@dataclass(frozen=True)
class ReleaseData:
    """Release labels (file order), exposure and failures."""

    releases: list[str]
    exposure: np.ndarray
    failures: np.ndarray


def has_column(path: str | Path, override: str | None, names: Sequence[str]) -> bool:
    """True when the file has a column for this field (used to pick the growth model)."""
    table = read_csv(path)
    return table.column(override, names, "") is not None


def read_releases(
    path: str | Path,
    *,
    release_col: str | None = None,
    exposure_col: str | None = None,
    failures_col: str | None = None,
) -> ReleaseData:
    """Read per-release rows (release, exposure, failures), oldest release first."""
    table = read_csv(path)
    rcol = table.require(release_col, RELEASE_NAMES, "the release", "--release-col")
    xcol = table.require(exposure_col, EXPOSURE_NAMES, "exposure", "--exposure-col")
    fcol = table.require(failures_col, FAILURE_NAMES, "failures", "--failures-col")
    return ReleaseData(
        table.strings(rcol),
        table.numbers(xcol, minimum=0),
        table.numbers(fcol, integer=True, minimum=0),
    )


def read_failure_times(path: str | Path, *, time_col: str | None = None) -> np.ndarray:
    """Read cumulative failure times (one per row) for a Crow-AMSAA fit."""
    table = read_csv(path)
    tcol = table.require(time_col, TIME_NAMES, "the cumulative failure time", "--time-col")
    times = table.numbers(tcol)
    bad = np.flatnonzero(times <= 0)
    if bad.size:
        line = table.rows[int(bad[0])][0]
        raise CsvInputError(f"{table.path} line {line}, column {tcol!r}: times must be > 0")
    return times
