"""Failure rates of parts by install condition (new vs refurbished), exact Poisson.

Rates are failures per 1000 hours in service with exact (Garwood) 95 % intervals from
:func:`fleet_server.analytics.rates_by_group`; the refurbished/new ratio is given with
its conditional binomial (exact) interval, so "reused parts fail more" can be read off
with its uncertainty.
"""

from __future__ import annotations

from typing import Any

from scipy.stats import beta

from fleet_server.analytics import rates_by_group

PER_HOURS = 1000.0


def _ratio(new: dict[str, float], ref: dict[str, float]) -> dict[str, Any] | None:
    """Refurbished/new rate ratio: conditional on the total failures, the refurbished
    share is binomial, which gives an exact interval (Clopper-Pearson) for the ratio."""
    if new["hours"] <= 0 or ref["hours"] <= 0:
        return None
    x, n = int(ref["failures"]), int(ref["failures"] + new["failures"])
    if n == 0:
        return None
    exposure = ref["hours"] / new["hours"]
    p_lo = float(beta.ppf(0.025, x, n - x + 1)) if x > 0 else 0.0
    p_hi = float(beta.ppf(0.975, x + 1, n - x)) if x < n else 1.0

    def to_ratio(p: float) -> float | None:
        return None if p >= 1 else p / (1 - p) / exposure

    point = None
    if new["failures"] > 0:
        point = (x / ref["hours"]) / (new["failures"] / new["hours"])
    return {"refurbished_over_new": point, "ci95": [to_ratio(p_lo), to_ratio(p_hi)]}


def compare_rates(counts: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Rates per condition (``None`` without exposure) and the refurbished/new ratio."""
    rows: dict[str, Any] = {}
    exposed = {c: v for c, v in counts.items() if v["hours"] > 0}
    table = {}
    if exposed:
        result = rates_by_group(
            list(exposed),
            [v["hours"] for v in exposed.values()],
            [int(v["failures"]) for v in exposed.values()],
            per=PER_HOURS,
        )
        table = {g.group: g for g in result.groups}
    for cond, v in counts.items():
        g = table.get(cond)
        rows[cond] = {
            "installations": int(v["installations"]),
            "failures": int(v["failures"]),
            "hours": round(float(v["hours"]), 3),
            "rate_per_1000h": g.rate if g else None,
            "ci95": [g.lower, g.upper] if g else None,
        }
    ratio = None
    if "new" in counts and "refurbished" in counts:
        ratio = _ratio(counts["new"], counts["refurbished"])
    return {"by_condition": rows, "ratio": ratio, "unit": "failures per 1000 hours in service"}
