"""Failure rates of parts by install condition (new vs refurbished), exact Poisson.

Rates are failures per 1000 hours in service with exact (Garwood, chi-square) 95 %
intervals from scipy; the refurbished/new ratio is given with its conditional binomial
(exact) interval, so "reused parts fail more" can be read off with its uncertainty.
"""

from __future__ import annotations

from typing import Any

from scipy.stats import beta, chi2

PER_HOURS = 1000.0


def poisson_interval(failures: int, level: float = 0.95) -> tuple[float, float]:
    """Exact interval for a Poisson count (Garwood)."""
    a = 1 - level
    lo = chi2.ppf(a / 2, 2 * failures) / 2 if failures > 0 else 0.0
    hi = chi2.ppf(1 - a / 2, 2 * failures + 2) / 2
    return float(lo), float(hi)


def rate_row(failures: int, hours: float, installations: int) -> dict[str, Any]:
    """Failures per 1000 h with the exact interval (None without exposure)."""
    if hours <= 0:
        return {
            "installations": installations,
            "failures": failures,
            "hours": hours,
            "rate_per_1000h": None,
            "ci95": None,
        }
    lo, hi = poisson_interval(failures)
    scale = PER_HOURS / hours
    return {
        "installations": installations,
        "failures": failures,
        "hours": round(hours, 3),
        "rate_per_1000h": failures * scale,
        "ci95": [lo * scale, hi * scale],
    }


def compare_rates(counts: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Rates per condition and the refurbished/new rate ratio with an exact interval
    (conditional on the total failures, the refurbished share is binomial)."""
    rows = {
        cond: rate_row(int(c["failures"]), float(c["hours"]), int(c["installations"]))
        for cond, c in counts.items()
    }
    new, ref = counts.get("new"), counts.get("refurbished")
    ratio: dict[str, Any] | None = None
    if new and ref and new["hours"] > 0 and ref["hours"] > 0:
        x, n = int(ref["failures"]), int(ref["failures"] + new["failures"])
        exposure = ref["hours"] / new["hours"]
        if n > 0:
            p_lo = float(beta.ppf(0.025, x, n - x + 1)) if x > 0 else 0.0
            p_hi = float(beta.ppf(0.975, x + 1, n - x)) if x < n else 1.0

            def to_ratio(p: float) -> float | None:
                return None if p >= 1 else p / (1 - p) / exposure

            point = (
                None
                if new["failures"] == 0
                else (x / ref["hours"]) / (new["failures"] / new["hours"])
            )
            ratio = {"refurbished_over_new": point, "ci95": [to_ratio(p_lo), to_ratio(p_hi)]}
    return {"by_condition": rows, "ratio": ratio, "unit": "failures per 1000 hours in service"}
