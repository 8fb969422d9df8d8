"""Fault and claim rates per group (model, hardware revision, batch, software version).

A rate is failures / exposure, where exposure is whatever the caller counts at risk: units,
unit-days, device-hours. Each group gets an exact Poisson (Garwood 1936) interval, which
keeps its coverage for zero and small counts, unlike the normal approximation. The table
also carries a Pearson chi-square test of "all groups share one rate" (df = groups - 1) so a
reader knows whether the differences are beyond chance; the early-warning module
(``claims``) is the tool for singling out *which* groups are high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fleet_server.analytics._stats import check_confidence, finite_or_none, garwood_interval
from fleet_server.analytics.errors import AnalyticsInputError


@dataclass(frozen=True)
class GroupRate:
    """One group's rate with its exact interval (per unit of exposure x ``per``)."""

    group: str
    exposure: float
    failures: int
    rate: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "group": self.group,
            "exposure": self.exposure,
            "failures": self.failures,
            "rate": finite_or_none(self.rate),
            "lower": finite_or_none(self.lower),
            "upper": finite_or_none(self.upper),
        }


@dataclass(frozen=True)
class RateTable:
    """Rates for every group plus the pooled rate and a homogeneity test."""

    groups: tuple[GroupRate, ...]
    pooled: GroupRate
    confidence: float
    per: float
    chi2: float
    df: int
    p_homogeneity: float | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "confidence": self.confidence,
            "per": self.per,
            "groups": [g.to_dict() for g in self.groups],
            "pooled": self.pooled.to_dict(),
            "homogeneity": {
                "test": "Pearson chi-square, all groups share one rate",
                "chi2": self.chi2,
                "df": self.df,
                "p_value": self.p_homogeneity,
            },
        }


def check_counts(
    exposure: Sequence[float] | np.ndarray, failures: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate exposure (finite, >= 0) and failure counts (whole, >= 0) of equal length."""
    e = np.asarray(exposure, dtype=float).ravel()
    k = np.asarray(failures, dtype=float).ravel()
    if e.size != k.size:
        raise AnalyticsInputError(f"exposure ({e.size}) and failures ({k.size}) differ in length")
    if e.size == 0:
        raise AnalyticsInputError("no rows: need exposure and failure counts")
    bad = ~np.isfinite(e) | (e < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AnalyticsInputError(f"exposure must be finite and >= 0 (row {i}: {e[i]})")
    bad = ~np.isfinite(k) | (k < 0) | (k != np.round(k))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AnalyticsInputError(f"failures must be whole numbers >= 0 (row {i}: {k[i]})")
    bad = (e == 0) & (k > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AnalyticsInputError(f"row {i} has {int(k[i])} failures but no exposure")
    return e, k.astype(np.int64)


def _rate(group: str, exposure: float, failures: int, confidence: float, per: float) -> GroupRate:
    lo, hi = garwood_interval(failures, confidence)
    if exposure > 0:
        return GroupRate(
            group,
            exposure,
            failures,
            per * failures / exposure,
            per * lo / exposure,
            per * hi / exposure,
        )
    return GroupRate(group, exposure, failures, float("nan"), float("nan"), float("nan"))


def rates_by_group(
    groups: Sequence[str] | np.ndarray,
    exposure: Sequence[float] | np.ndarray,
    failures: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    per: float = 1.0,
) -> RateTable:
    """Aggregate rows by group label and return each group's rate with an exact interval.

    ``groups`` labels each row (combine several keys beforehand, e.g. "model-a/rev2");
    ``exposure`` is the amount at risk of the row, ``failures`` its failure count. ``per``
    scales the rates (e.g. 1000 for "per 1000 unit-months"). Groups are listed by
    decreasing rate.
    """
    confidence = check_confidence(confidence)
    if not per > 0:
        raise AnalyticsInputError(f"per must be > 0, got {per}")
    e, k = check_counts(exposure, failures)
    labels = np.asarray([str(g) for g in groups], dtype=object)
    if labels.size != e.size:
        raise AnalyticsInputError(f"groups ({labels.size}) and rows ({e.size}) differ in length")
    names, inverse = np.unique(labels, return_inverse=True)
    e_g = np.bincount(inverse, weights=e, minlength=names.size)
    k_g = np.bincount(inverse, weights=k, minlength=names.size).astype(np.int64)
    rows = [
        _rate(str(n), float(eg), int(kg), confidence, per)
        for n, eg, kg in zip(names, e_g, k_g, strict=True)
    ]
    rows.sort(key=lambda g: (-(g.rate if np.isfinite(g.rate) else -1.0), g.group))
    total_e, total_k = float(e_g.sum()), int(k_g.sum())
    pooled = _rate("(all)", total_e, total_k, confidence, per)
    # Homogeneity: expected = exposure share of the total count.
    live = e_g > 0
    chi2, df, p = 0.0, int(live.sum()) - 1, None
    if total_k > 0 and df >= 1:
        expected = total_k * e_g[live] / total_e
        chi2 = float(((k_g[live] - expected) ** 2 / expected).sum())
        p = float(stats.chi2.sf(chi2, df))
    return RateTable(tuple(rows), pooled, confidence, float(per), chi2, max(df, 0), p)
