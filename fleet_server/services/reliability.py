"""Arrays for the reliability analytics, built from the registry and warranty claims.

Thin adapters: each function reads devices (units at risk from their activation date to
today or their decommissioning) and claims (not rejected), shapes them as the functions in
:mod:`fleet_server.analytics` expect, and returns their result. Time in service is counted
in days; a failure on the activation day counts as half a day (a Weibull time must be > 0).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select
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
class Unit:
    """A device at risk: its group labels and its service window."""

    key: int
    labels: dict[str, str]
    start: date
    end: date


def _day(ts: float) -> date:
    return datetime.fromtimestamp(ts, UTC).date()


def units(session: Session, today: date, model: str | None = None) -> list[Unit]:
    """Activated devices with their service windows (to today or decommissioning)."""
    q = select(Device).where(Device.activation_date.is_not(None))
    if model:
        q = q.where(Device.model == model)
    out = []
    for d in session.execute(q).scalars():
        start = d.activation_date
        if start is None or start > today:
            continue
        end = min(today, _day(d.decommissioned_at)) if d.decommissioned_at else today
        labels = {g: str(getattr(d, g) or "(none)") for g in GROUPABLE}
        out.append(Unit(d.id, labels, start, max(start, end)))
    return out


def claims(session: Session, failure_mode: str | None = None) -> list[tuple[int, date]]:
    """(device key, failure date) of every claim not rejected, oldest first."""
    q = select(WarrantyClaim.device_key, WarrantyClaim.failure_date).where(
        WarrantyClaim.device_key.is_not(None), WarrantyClaim.state != "rejected"
    )
    if failure_mode:
        q = q.where(WarrantyClaim.failure_mode == failure_mode)
    return [(int(k), d) for k, d in session.execute(q.order_by(WarrantyClaim.failure_date)).all()]


@_refuses_insufficient_data
def weibull(
    session: Session, today: date, failure_mode: str, model: str | None = None
) -> dict[str, Any]:
    """Weibull fit of days from activation to the first claim of ``failure_mode``; units
    without such a claim are right-censored at their days in service."""
    first: dict[int, date] = {}
    for key, when in claims(session, failure_mode):
        first.setdefault(key, when)
    times: list[float] = []
    failed: list[bool] = []
    for u in units(session, today, model):
        when = first.get(u.key)
        if when is not None and u.start <= when:
            times.append(max((when - u.start).days, 0.5))
            failed.append(True)
        elif (u.end - u.start).days > 0:
            times.append(float((u.end - u.start).days))
            failed.append(False)
    fit = weibull_mle(times, failed)
    return {
        "failure_mode": failure_mode,
        "model": model,
        "unit": "days in service",
        "units": len(times),
        "failures": int(sum(failed)),
        "censored": int(len(failed) - sum(failed)),
        "fit": fit.to_dict(),
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
    """(group, months in service, calendar month) -> [unit-months at risk, claims]."""
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    by_key = {u.key: u for u in units(session, today, model)}
    for u in by_key.values():
        cursor = u.start
        while cursor < u.end:
            seg_end = min(_next_month(cursor), u.end)
            cell = cells[(u.labels[by], _months_between(u.start, cursor), cursor.strftime("%Y-%m"))]
            cell[0] += (seg_end - cursor).days / DAYS_PER_MONTH
            cursor = seg_end
    for key, when in claims(session, failure_mode):
        u = by_key.get(key)
        if u is None or not u.start <= when <= u.end:
            continue
        cell = cells[(u.labels[by], _months_between(u.start, when), when.strftime("%Y-%m"))]
        if cell[0] == 0:
            cell[0] = 1 / DAYS_PER_MONTH  # a claim on the last day: one day at risk
        cell[1] += 1
    return cells


@_refuses_insufficient_data
def claims_early_warning(
    session: Session,
    today: date,
    by: str,
    failure_mode: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Early warning over batches or software versions from the fleet's own claims and
    unit-months at risk, age-matched (months in service) with a monthly CUSUM."""
    _check_by(by)
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
) -> dict[str, Any]:
    """Claims per ``per`` unit-months in service for each group, exact intervals."""
    _check_by(by)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (group, _age, _period), (exposure, n) in month_cells(
        session, today, by, failure_mode, model
    ).items():
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
    fleet = units(session, today, model)
    keys = {u.key for u in fleet}

    def operating_days(at: date) -> float:
        return float(sum(max(0, (min(at, u.end) - u.start).days) for u in fleet))

    times = [
        t
        for key, when in claims(session, failure_mode)
        if key in keys
        if (t := operating_days(when + timedelta(days=1))) > 0
    ]
    fit = crow_amsaa(times, operating_days(today + timedelta(days=1)) or None)
    return {
        "failure_mode": failure_mode,
        "model": model,
        "time_unit": "fleet unit-days",
        **fit.to_dict(),
    }
