"""Small shared helpers: confidence levels, Garwood intervals, Benjamini-Hochberg."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fleet_server.analytics.errors import AnalyticsInputError


def check_confidence(confidence: float) -> float:
    """Return ``confidence`` if it is a two-sided level strictly between 0 and 1."""
    if not (isinstance(confidence, int | float) and 0.0 < float(confidence) < 1.0):
        raise AnalyticsInputError(f"confidence must be between 0 and 1, got {confidence!r}")
    return float(confidence)


def garwood_interval(count: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood 1936) two-sided interval for the mean of a Poisson count.

    Lower = chi2(a/2, 2k)/2 (0 when k = 0), upper = chi2(1-a/2, 2k+2)/2. Divide by the exposure
    to get an interval for a rate. Coverage is at least ``confidence`` for every true mean.
    """
    alpha = 1.0 - confidence
    lower = 0.0 if count == 0 else float(stats.chi2.ppf(alpha / 2.0, 2 * count) / 2.0)
    upper = float(stats.chi2.ppf(1.0 - alpha / 2.0, 2 * count + 2) / 2.0)
    return lower, upper


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Rejecting every hypothesis whose adjusted value is <= q controls the false discovery rate
    at q for independent or positively dependent tests (Benjamini & Hochberg 1995).
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return np.maximum(adjusted, p)  # never below the raw p-value (guards rounding)


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity or NaN: map them to None for ``to_dict``."""
    return None if value is None or not math.isfinite(value) else float(value)
