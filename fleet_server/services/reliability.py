"""Arrays for the reliability analytics, built from the registry and warranty claims.

Thin adapters: each function reads devices (units at risk from their activation date to
today or their decommissioning) and claims (not rejected), shapes them as the functions in
:mod:`fleet_server.analytics` expect, and returns their result. Devices are read as
cohorts (one grouped query: devices sharing a label and a service window count once, with
their number), so the fleet-wide analyses stay fast at 100,000 devices. Time in service is counted
in days; a failure on the activation day counts as half a day (a Weibull time must be > 0).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.analytics import (
    AnalyticsInputError,
    crow_amsaa,
    early_warning,
    rates_by_group,
    weibull_mle,
)
from fleet_server.db.models import Device, WarrantyClaim
from fleet_server.errors import InvalidInputError

GROUPABLE = ("batch", "software_version", "model", "hw_revision", "region")
DAYS_PER_MONTH = 30.4375

P = ParamSpec("P")
R = TypeVar("R")


def _refuses_insufficient_data(fn: Callable[P, R]) -> Callable[P, R]:
    """A fit the data cannot support is a 422 ``insufficient_data`` naming why."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except AnalyticsInputError as exc:
            raise InvalidInputError("insufficient_data", str(exc)) from None

    return wrapper


def _check_by(by: str) -> None:
    if by not in GROUPABLE:
        raise InvalidInputError("validation_error", f"by: must be one of {', '.join(GROUPABLE)}")


@dataclass(frozen=True)
class Cohort:
    """Devices at risk with the same group label and the same service window."""

    label: str
    start: date
    end: date
    count: int


@dataclass(frozen=True)
class Claim:
    """A claim not rejected, with its unit's group label and service window."""

    key: int
    when: date
    label: str
    start: date
    end: date


def _day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def _window(start: date | None, decommissioned_at: float | None, today: date) -> date | None:
    """The end of a unit's service window, or None when it is not at risk yet."""
    if start is None or start > today:
        return None
    end = min(today, _day(decommissioned_at)) if decommissioned_at else today
    return max(start, end)


def _label(column: Any, value: Any) -> str:
    return "" if column is None else str(value or "(none)")


def _device_scope(q: Any, model: str | None) -> Any:
    q = q.where(Device.activation_date.is_not(None))
    return q.where(Device.model == model) if model else q


def cohorts(
    session: Session, today: date, by: str | None, model: str | None = None
) -> list[Cohort]:
    """Activated devices counted per (``by`` label, activation date, decommissioning):
    one grouped query, so 100,000 devices come back as a few hundred rows. Devices with
    the same label and service window contribute identically to every analysis here."""
    column = getattr(Device, by) if by else None
    cols = [c for c in (column,) if c is not None]
    q = select(*cols, Device.activation_date, Device.decommissioned_at, func.count())
    q = _device_scope(q, model).group_by(*cols, Device.activation_date, Device.decommissioned_at)
    merged: dict[tuple[str, date, date], int] = defaultdict(int)
    for row in session.execute(q).all():
        *label, start, decommissioned_at, n = row
        end = _window(start, decommissioned_at, today)
        if end is not None:
            merged[(_label(column, label[0] if label else None), start, end)] += int(n)
    return [Cohort(lab, s, e, n) for (lab, s, e), n in sorted(merged.items())]


def claims(
    session: Session,
    today: date,
    by: str | None,
    failure_mode: str | None = None,
    model: str | None = None,
) -> list[Claim]:
    """Every claim not rejected on a unit at risk, oldest first, with the unit's label
    and service window (claims are few: one joined query)."""
    column = getattr(Device, by) if by else None
    cols = [c for c in (column,) if c is not None]
    q = select(
        WarrantyClaim.device_key,
        WarrantyClaim.failure_date,
        Device.activation_date,
        Device.decommissioned_at,
        *cols,
    ).join(Device, Device.id == WarrantyClaim.device_key)
    q = _device_scope(q, model).where(WarrantyClaim.state != "rejected")
    if failure_mode:
        q = q.where(WarrantyClaim.failure_mode == failure_mode)
    out = []
    for key, when, start, decommissioned_at, *label in session.execute(
        q.order_by(WarrantyClaim.failure_date, WarrantyClaim.id)
    ).all():
        end = _window(start, decommissioned_at, today)
        if end is not None:
            out.append(
                Claim(int(key), when, _label(column, label[0] if label else None), start, end)
            )
    return out


def plotting_positions(failures: list[float], censored: dict[float, int]) -> list[dict[str, float]]:
    """Median-rank plotting positions of the failures among right-censored units
    (Johnson's adjusted ranks with Bernard's approximation; at equal times failures rank
    before censored units): the data points of a Weibull probability plot."""
    n = len(failures) + sum(censored.values())
    events = sorted([(t, 0, 1) for t in failures] + [(t, 1, c) for t, c in censored.items()])
    done, rank, out = 0, 0.0, []
    for t, is_censored, count in events:
        if not is_censored:
            rank += (n + 1 - rank) / (1 + n - done)
            out.append({"days": t, "F": (rank - 0.3) / (n + 0.4)})
        done += count
    return out


@_refuses_insufficient_data
def weibull(
    session: Session,
    today: date,
    failure_mode: str,
    model: str | None = None,
    *,
    fleet: list[Cohort] | None = None,
) -> dict[str, Any]:
    """Weibull fit of days from activation to the first claim of ``failure_mode``; units
    without such a claim are right-censored at their days in service. Returns the failure
    times' plotting positions (``points``) for the probability plot as well. ``fleet``:
    the units' cohorts (``cohorts(session, today, None, model)``) when the caller fits
    several failure modes in one request and reads them once."""
    first: dict[int, Claim] = {}
    for c in claims(session, today, None, failure_mode, model):
        first.setdefault(c.key, c)
    failures: list[float] = []
    left: dict[tuple[date, date], int] = defaultdict(int)
    for c in first.values():
        if c.start <= c.when:
            failures.append(max(float((c.when - c.start).days), 0.5))
            left[(c.start, c.end)] -= 1
    for u in cohorts(session, today, None, model) if fleet is None else fleet:
        left[(u.start, u.end)] += u.count
    censored: dict[float, int] = defaultdict(int)
    for (start, end), n in left.items():
        if (end - start).days > 0 and n > 0:
            censored[float((end - start).days)] += n
    times = failures + list(censored)
    fit = weibull_mle(
        times,
        [True] * len(failures) + [False] * len(censored),
        [1.0] * len(failures) + [float(n) for n in censored.values()],
    )
    n_censored = sum(censored.values())
    return {
        "failure_mode": failure_mode,
        "model": model,
        "unit": "days in service",
        "units": len(failures) + n_censored,
        "failures": len(failures),
        "censored": n_censored,
        "fit": fit.to_dict(),
        "points": plotting_positions(failures, censored),
    }


def _months_between(a: date, b: date) -> int:
    return (b.year - a.year) * 12 + b.month - a.month - (1 if b.day < a.day else 0)


def _next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def month_cells(
    session: Session,
    today: date,
    by: str,
    failure_mode: str | None = None,
    model: str | None = None,
) -> dict[tuple[str, int, str], list[float]]:
    """(group, months in service, calendar month) -> [unit-months at risk, claims].

    Days at risk are summed as whole days per cell over cohorts (devices sharing label
    and service window) and turned into unit-months once, so the result equals the
    per-unit sum up to float rounding (tests/integration/server/test_reliability_cohorts.py)."""
    _check_by(by)
    days: dict[tuple[str, int, str], int] = defaultdict(int)
    counts: dict[tuple[str, int, str], int] = defaultdict(int)
    for u in cohorts(session, today, by, model):
        cursor = u.start
        while cursor < u.end:
            seg_end = min(_next_month(cursor), u.end)
            key = (u.label, _months_between(u.start, cursor), cursor.strftime("%Y-%m"))
            days[key] += (seg_end - cursor).days * u.count
            cursor = seg_end
    for c in claims(session, today, by, failure_mode, model):
        if not c.start <= c.when <= c.end:
            continue
        key = (c.label, _months_between(c.start, c.when), c.when.strftime("%Y-%m"))
        if days[key] == 0:
            days[key] = 1  # a claim on the last day: one day at risk
        counts[key] += 1
    return {k: [d / DAYS_PER_MONTH, float(counts.get(k, 0))] for k, d in days.items()}


@_refuses_insufficient_data
def claims_early_warning(
    session: Session,
    today: date,
    by: str,
    failure_mode: str | None = None,
    model: str | None = None,
    *,
    cells: dict[tuple[str, int, str], list[float]] | None = None,
) -> dict[str, Any]:
    """Early warning over batches or software versions from the fleet's own claims and
    unit-months at risk, age-matched (months in service) with a monthly CUSUM. ``cells``:
    :func:`month_cells` for the same arguments, when the caller already has them."""
    _check_by(by)
    if cells is None:
        cells = month_cells(session, today, by, failure_mode, model)
    keys = sorted(cells)
    report = early_warning(
        [k[0] for k in keys],
        [cells[k][0] for k in keys],
        [int(cells[k][1]) for k in keys],
        age=[k[1] for k in keys],
        period=[k[2] for k in keys],
    )
    return {
        "by": by,
        "failure_mode": failure_mode,
        "exposure_unit": "unit-months",
        **report.to_dict(),
    }


@_refuses_insufficient_data
def claim_rates(
    session: Session,
    today: date,
    by: str,
    failure_mode: str | None = None,
    model: str | None = None,
    per: float = 1000.0,
    *,
    cells: dict[tuple[str, int, str], list[float]] | None = None,
) -> dict[str, Any]:
    """Claims per ``per`` unit-months in service for each group, exact intervals.
    ``cells``: :func:`month_cells` for the same arguments, when the caller has them."""
    _check_by(by)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    if cells is None:
        cells = month_cells(session, today, by, failure_mode, model)
    for (group, _age, _period), (exposure, n) in cells.items():
        totals[group][0] += exposure
        totals[group][1] += n
    groups = sorted(totals)
    table = rates_by_group(
        groups, [totals[g][0] for g in groups], [int(totals[g][1]) for g in groups], per=per
    )
    return {
        "by": by,
        "failure_mode": failure_mode,
        "exposure_unit": "unit-months",
        **table.to_dict(),
    }


@_refuses_insufficient_data
def growth(
    session: Session, today: date, failure_mode: str | None = None, model: str | None = None
) -> dict[str, Any]:
    """Crow-AMSAA fit of claims against cumulative fleet operating time (unit-days):
    beta < 1 means the fleet's claim rate is falling (reliability growth)."""
    fleet = cohorts(session, today, None, model)

    def operating_days(at: date) -> float:
        return float(sum(u.count * max(0, (min(at, u.end) - u.start).days) for u in fleet))

    times = [
        t
        for c in claims(session, today, None, failure_mode, model)
        if (t := operating_days(c.when + timedelta(days=1))) > 0
    ]
    fit = crow_amsaa(times, operating_days(today + timedelta(days=1)) or None)
    return {
        "failure_mode": failure_mode,
        "model": model,
        "time_unit": "fleet unit-days",
        **fit.to_dict(),
    }
