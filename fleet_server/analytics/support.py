"""Support analytics, pure: the SLA summary of an event log, weekly SLA compliance with
its confidence interval, the backlog over time, time-to-resolve as survival data
(Kaplan-Meier per opening-week cohort, open tickets censored), a ticket-volume forecast
with weekly seasonality, and a spike detector of tickets per 1,000 devices for devices
that took a release against those that did not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from fleet_server.analytics._stats import check_confidence, garwood_interval
from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.servicenow import Incident

WEEK = 7 * 86400.0
DAY = 86400.0


def _iso(ts: float | None) -> str | None:
    from datetime import UTC, datetime

    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def sla_summary(incidents: Sequence[Incident]) -> dict[str, Any]:
    """What ``fleetctl analytics sla`` prints: tickets, open, closed; for closed tickets
    met / breached by the log's own flag at closure, in total and per priority; each
    breach's moment; and time-to-resolve statistics (hours)."""
    closed = [i for i in incidents if i.closed]
    by_priority: dict[str, dict[str, int]] = {}
    met = breached = 0
    for inc in closed:
        row = by_priority.setdefault(inc.priority, {"met": 0, "breached": 0})
        if inc.made_sla is False:
            breached += 1
            row["breached"] += 1
        elif inc.made_sla is True:
            met += 1
            row["met"] += 1
    breaches = [
        {"number": i.number, "at": _iso(i.breached_at)} for i in closed if i.made_sla is False
    ]
    hours = np.array([h for i in incidents if (h := i.hours_to_resolve) is not None])
    ttr: dict[str, Any] = {"n": int(hours.size), "median": None, "p90": None, "mean": None}
    if hours.size:
        ttr.update(
            median=round(float(np.median(hours)), 3),
            p90=round(float(np.percentile(hours, 90)), 3),
            mean=round(float(hours.mean()), 3),
        )
    return {
        "tickets": len(incidents),
        "open": len(incidents) - len(closed),
        "closed": len(closed),
        "met": met,
        "breached": breached,
        "by_priority": dict(sorted(by_priority.items())),
        "breaches": breaches,
        "hours_to_resolve": ttr,
    }


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sound near 0 and 1, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(stats.norm.ppf(0.5 + check_confidence(confidence) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Closed:
    """A finished ticket: when it closed and whether it met its SLA."""

    closed_at: float
    met: bool


def weekly_compliance(items: Sequence[Closed], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per week of closing (weeks start Monday 00:00 UTC): met share with its Wilson
    interval."""
    weeks: dict[int, list[bool]] = defaultdict(list)
    for c in items:
        weeks[_week(c.closed_at)].append(c.met)
    out = []
    for w in sorted(weeks):
        flags = weeks[w]
        k, n = sum(flags), len(flags)
        lo, hi = wilson(k, n, confidence)
        out.append(
            {
                "week": _iso(w * WEEK - 3 * DAY),
                "n": n,
                "met": k,
                "compliance": round(k / n, 4),
                "low": round(lo, 4),
                "high": round(hi, 4),
            }
        )
    return out


def _week(ts: float) -> int:
    # Epoch day 0 is a Thursday: shift by 3 days so weeks start on Monday.
    return int((ts + 3 * DAY) // WEEK)


def backlog(
    spans: Sequence[tuple[float, float | None, str]], start: float, end: float, step: float = DAY
) -> dict[str, list[int]]:
    """Open tickets per category at each ``step`` from ``start`` to ``end``: ``spans`` are
    ``(opened_at, done_at or None, category)``."""
    points = np.arange(start, end + 1e-9, step)
    out: dict[str, np.ndarray] = {}
    for opened, done, cat in spans:
        arr = out.setdefault(cat, np.zeros(points.size, dtype=int))
        arr += (points >= opened) & ((done is None) | (points < (done or 0)))
    return {"at": [_iso(float(p)) for p in points], **{c: a.tolist() for c, a in out.items()}}  # type: ignore[dict-item]


def kaplan_meier(
    spans: Sequence[tuple[float, float | None]],
    now: float,
    horizons_h: Sequence[float] = (4, 8, 24, 72),
) -> dict[str, Any]:
    """Time to resolve as survival data: ``spans`` are ``(opened_at, resolved_at or
    None)``; open tickets are right-censored at ``now``. Returns the median (hours, None
    when more than half are still open) and the share still open at each horizon."""
    if not spans:
        raise AnalyticsInputError("no tickets to estimate time to resolve")
    durations = np.array([((r if r is not None else now) - o) / 3600.0 for o, r in spans])
    observed = np.array([r is not None for _, r in spans])
    if (durations < 0).any():
        raise AnalyticsInputError("a ticket is resolved before it was opened")
    durations = np.maximum(durations, 1e-9)
    data = stats.CensoredData(uncensored=durations[observed], right=durations[~observed])
    sf = stats.ecdf(data).sf
    q = sf.quantiles
    probs = sf.probabilities
    still_open = {f"{h:g}h": round(float(sf.evaluate(h)), 4) for h in horizons_h}
    below = np.nonzero(probs <= 0.5)[0]
    median = float(q[below[0]]) if below.size else None
    return {
        "n": int(durations.size),
        "resolved": int(observed.sum()),
        "censored": int((~observed).sum()),
        "median_h": median,
        "still_open": still_open,
    }


def km_by_cohort(
    spans: Sequence[tuple[float, float | None]], now: float
) -> dict[str, dict[str, Any]]:
    """:func:`kaplan_meier` per opening week (``YYYY-MM-DD`` of its Monday)."""
    cohorts: dict[int, list[tuple[float, float | None]]] = defaultdict(list)
    for s in spans:
        cohorts[_week(s[0])].append(s)
    return {
        str(_iso(w * WEEK - 3 * DAY))[:10]: kaplan_meier(v, now) for w, v in sorted(cohorts.items())
    }


def forecast_daily(counts: Sequence[int], first_weekday: int, days: int = 14) -> dict[str, Any]:
    """Ticket volume per day ahead: a log-linear trend times a day-of-week factor,
    fitted by least squares on ``log(1 + count)`` (at least two full weeks needed);
    ``first_weekday`` is the weekday (0 = Monday) of ``counts[0]``. Returns the forecast
    and the fitted weekly profile."""
    y = np.asarray(counts, dtype=float)
    if y.size < 14:
        raise AnalyticsInputError("a weekly forecast needs at least 14 days of counts")
    t = np.arange(y.size)
    dow = (t + first_weekday) % 7
    x = np.column_stack(
        [np.ones_like(t, dtype=float), t / y.size] + [(dow == d).astype(float) for d in range(1, 7)]
    )
    coef, *_ = np.linalg.lstsq(x, np.log1p(y), rcond=None)
    resid = np.log1p(y) - x @ coef
    sigma = float(np.sqrt(np.sum(resid**2) / max(1, y.size - x.shape[1])))
    tf = np.arange(y.size, y.size + days)
    dowf = (tf + first_weekday) % 7
    xf = np.column_stack(
        [np.ones_like(tf, dtype=float), tf / y.size]
        + [(dowf == d).astype(float) for d in range(1, 7)]
    )
    mean = np.expm1(xf @ coef)
    profile = np.exp(np.concatenate([[0.0], coef[2:]]))
    return {
        "forecast": [round(float(v), 2) for v in np.maximum(mean, 0)],
        "low": [round(float(v), 2) for v in np.maximum(np.expm1(xf @ coef - 1.96 * sigma), 0)],
        "high": [round(float(v), 2) for v in np.expm1(xf @ coef + 1.96 * sigma)],
        "weekly_profile": [round(float(v / profile.mean()), 3) for v in profile],
    }


def release_spike(
    took: tuple[int, int],
    did_not: tuple[int, int],
    confidence: float = 0.95,
    min_ratio: float = 1.5,
) -> dict[str, Any]:
    """Tickets per 1,000 devices for devices that took a release against those that did
    not (``(tickets, devices)`` each): the rates with Garwood intervals, their ratio, the
    exact conditional test's p-value, and ``spike`` when the ratio is significantly above
    1 and at least ``min_ratio`` (the rollout health gates' comparison)."""
    (k1, n1), (k0, n0) = took, did_not
    if n1 <= 0 or n0 <= 0:
        raise AnalyticsInputError("both groups need devices")
    r1, r0 = 1000 * k1 / n1, 1000 * k0 / n0
    lo1, hi1 = garwood_interval(k1, confidence)
    lo0, hi0 = garwood_interval(k0, confidence)
    # Conditional on k1 + k0, k1 is binomial with p = n1 / (n1 + n0) under equal rates.
    p = (
        float(stats.binomtest(k1, k1 + k0, n1 / (n1 + n0), alternative="greater").pvalue)
        if k1 + k0
        else 1.0
    )
    ratio = (r1 / r0) if r0 > 0 else (math.inf if r1 > 0 else 1.0)
    alpha = 1 - check_confidence(confidence)
    return {
        "took": {
            "tickets": k1,
            "devices": n1,
            "per_1000": round(r1, 3),
            "low": round(1000 * lo1 / n1, 3),
            "high": round(1000 * hi1 / n1, 3),
        },
        "did_not": {
            "tickets": k0,
            "devices": n0,
            "per_1000": round(r0, 3),
            "low": round(1000 * lo0 / n0, 3),
            "high": round(1000 * hi0 / n0, 3),
        },
        "ratio": None if math.isinf(ratio) else round(ratio, 3),
        "p_value": round(p, 6),
        "spike": bool(p < alpha and ratio >= min_ratio),
    }
