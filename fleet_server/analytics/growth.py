"""Reliability growth: is the product getting more reliable as fixes ship?

Two views, for two kinds of data:

``crow_amsaa`` - failure times on one cumulative operating clock (e.g. summed device-hours
    of a fleet, or a test programme with fixes incorporated as it goes). Model: the Crow-AMSAA
    power-law non-homogeneous Poisson process, E[N(t)] = lambda t^beta, failure intensity
    rho(t) = lambda beta t^(beta - 1); beta < 1 means the failure intensity falls (growth),
    beta = 1 a constant rate, beta > 1 deterioration. Estimates are the maximum-likelihood
    ones of MIL-HDBK-189: beta = n / sum ln(T / t_i), lambda = n / T^beta, where T is the end
    of observation (time-terminated) or the last failure (failure-terminated). Also reported:
    the unbiased beta ((n-1)/n x beta for time-, (n-2)/n for failure-terminated data), an
    exact conditional interval for beta (2 n beta / beta_hat ~ chi2 with 2n, resp. 2(n-1),
    degrees of freedom), the instantaneous MTBF 1/rho(T) and the trend test of "no growth"
    (a homogeneous Poisson process): 2 sum ln(T/t_i) ~ chi2(2n), resp. chi2(2(n-1)).

``release_trend`` - per software release (oldest first): exposure (device-days, units) and
    failures. Each release gets its rate with an exact (Garwood) interval; across releases a
    log-linear Poisson regression log(rate_i) = a + b i (i = release index) is fitted by
    maximum likelihood. exp(b) is the rate ratio from one release to the next, with a Wald
    interval; the trend test is the likelihood-ratio test of b = 0. When the releases vary
    more than Poisson around the trend (Pearson dispersion > 1 with >= 3 releases), the
    interval is widened by sqrt(dispersion) and the LR statistic divided by it
    (quasi-Poisson), and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fleet_server.analytics._stats import check_confidence, finite_or_none, garwood_interval
from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.rates import check_counts


@dataclass(frozen=True)
class CrowAmsaaFit:
    """Crow-AMSAA (power-law NHPP) fit of failure times on one cumulative clock."""

    n_failures: int
    end_time: float
    termination: str
    beta: float
    beta_unbiased: float
    lam: float
    beta_ci: tuple[float, float]
    confidence: float
    intensity_at_end: float
    mtbf_instantaneous: float
    mtbf_cumulative: float
    trend_statistic: float
    trend_df: int
    p_growth: float
    p_no_trend: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "model": "crow_amsaa",
            "n_failures": self.n_failures,
            "end_time": self.end_time,
            "termination": self.termination,
            "beta": self.beta,
            "beta_unbiased": self.beta_unbiased,
            "lambda": self.lam,
            "beta_ci": list(self.beta_ci),
            "confidence": self.confidence,
            "intensity_at_end": self.intensity_at_end,
            "mtbf_instantaneous": self.mtbf_instantaneous,
            "mtbf_cumulative": self.mtbf_cumulative,
            "trend_test": {
                "statistic": self.trend_statistic,
                "df": self.trend_df,
                "p_growth": self.p_growth,
                "p_two_sided": self.p_no_trend,
            },
        }


def crow_amsaa(
    times: Sequence[float] | np.ndarray,
    end_time: float | None = None,
    *,
    confidence: float = 0.95,
) -> CrowAmsaaFit:
    """Fit the Crow-AMSAA model to cumulative failure times (MIL-HDBK-189 MLE).

    ``times``: cumulative operating time at each failure (> 0). ``end_time``: when
    observation stopped (>= the last failure; time-terminated); omit it when observation
    stopped at the last failure (failure-terminated).
    """
    confidence = check_confidence(confidence)
    t = np.sort(np.asarray(times, dtype=float).ravel())
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise AnalyticsInputError("failure times must be a non-empty list of finite values > 0")
    n = int(t.size)
    if end_time is None:
        termination, big_t, df = "failure", float(t[-1]), 2 * (n - 1)
        if n < 3:
            raise AnalyticsInputError("a failure-terminated Crow-AMSAA fit needs >= 3 failures")
    else:
        termination, big_t, df = "time", float(end_time), 2 * n
        if not math.isfinite(big_t) or big_t < t[-1]:
            raise AnalyticsInputError(
                f"end time {end_time} is before the last failure at {t[-1]:g}"
            )
        if n < 2:
            raise AnalyticsInputError("a Crow-AMSAA fit needs >= 2 failures")
    s = float(np.log(big_t / t).sum())
    if s <= 0:
        raise AnalyticsInputError("all failures at the end time: the growth slope is undefined")
    beta = n / s
    lam = n / big_t**beta
    unbiased = beta * ((n - 2) if termination == "failure" else (n - 1)) / n
    alpha = 1.0 - confidence
    ci = (
        float(beta * stats.chi2.ppf(alpha / 2.0, df) / (2.0 * n)),
        float(beta * stats.chi2.ppf(1.0 - alpha / 2.0, df) / (2.0 * n)),
    )
    intensity = lam * beta * big_t ** (beta - 1.0)
    stat = 2.0 * s
    p_growth = float(stats.chi2.sf(stat, df))
    p_two = float(min(1.0, 2.0 * min(p_growth, stats.chi2.cdf(stat, df))))
    return CrowAmsaaFit(
        n_failures=n,
        end_time=big_t,
        termination=termination,
        beta=beta,
        beta_unbiased=unbiased,
        lam=lam,
        beta_ci=ci,
        confidence=confidence,
        intensity_at_end=intensity,
        mtbf_instantaneous=1.0 / intensity,
        mtbf_cumulative=big_t / n,
        trend_statistic=stat,
        trend_df=df,
        p_growth=p_growth,
        p_no_trend=p_two,
    )


@dataclass(frozen=True)
class ReleaseRate:
    """Failure rate of one release with its exact interval."""

    release: str
    exposure: float
    failures: int
    rate: float
    lower: float
    upper: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "release": self.release,
            "exposure": self.exposure,
            "failures": self.failures,
            "rate": finite_or_none(self.rate),
            "lower": finite_or_none(self.lower),
            "upper": finite_or_none(self.upper),
        }


@dataclass(frozen=True)
class ReleaseTrend:
    """Per-release rates and the log-linear trend across releases."""

    releases: tuple[ReleaseRate, ...]
    ratio_per_release: float
    ratio_ci: tuple[float, float]
    lr_statistic: float
    p_value: float
    dispersion: float | None
    quasi_poisson: bool
    confidence: float
    per: float
    verdict: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "model": "release_trend",
            "releases": [r.to_dict() for r in self.releases],
            "ratio_per_release": self.ratio_per_release,
            "ratio_ci": [finite_or_none(self.ratio_ci[0]), finite_or_none(self.ratio_ci[1])],
            "lr_statistic": self.lr_statistic,
            "p_value": self.p_value,
            "dispersion": self.dispersion,
            "quasi_poisson": self.quasi_poisson,
            "confidence": self.confidence,
            "per": self.per,
            "verdict": self.verdict,
        }


def _poisson_loglik(k: np.ndarray, mu: np.ndarray) -> float:
    live = mu > 0
    return float((k[live] * np.log(mu[live]) - mu[live]).sum())


def release_trend(
    releases: Sequence[object] | np.ndarray,
    exposure: Sequence[float] | np.ndarray,
    failures: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    per: float = 1.0,
    alpha: float = 0.05,
) -> ReleaseTrend:
    """Rates per release (in order of first appearance: list the oldest first) and the trend.

    ``exposure`` is the amount at risk on each row (device-days, units), ``failures`` the
    count. Rows of the same release are summed. Returns each release's rate, the rate ratio
    from one release to the next with an interval, the LR test of "no trend", and a verdict
    ("growth", "deterioration" or "no significant trend" at level ``alpha``).
    """
    confidence = check_confidence(confidence)
    e, k = check_counts(exposure, failures)
    labels = [str(r) for r in releases]
    if len(labels) != e.size:
        raise AnalyticsInputError(f"releases ({len(labels)}) and rows ({e.size}) differ in length")
    order: dict[str, int] = {}
    for lab in labels:
        order.setdefault(lab, len(order))
    idx = np.asarray([order[lab] for lab in labels])
    m = len(order)
    e_r = np.bincount(idx, weights=e, minlength=m)
    k_r = np.bincount(idx, weights=k, minlength=m)
    if m < 2 or int((e_r > 0).sum()) < 2:
        raise AnalyticsInputError("a trend across releases needs >= 2 releases with exposure")
    if k_r.sum() == 0:
        raise AnalyticsInputError("no failures in any release: no trend can be estimated")
    rows = []
    for name, ex, kk in zip(order, e_r, k_r, strict=True):
        lo, hi = garwood_interval(int(kk), confidence)
        if ex > 0:
            rows.append(
                ReleaseRate(name, float(ex), int(kk), per * kk / ex, per * lo / ex, per * hi / ex)
            )
        else:
            rows.append(ReleaseRate(name, 0.0, int(kk), math.nan, math.nan, math.nan))
    live = e_r > 0
    x = np.arange(m, dtype=float)[live]
    kk_, ee = k_r[live], e_r[live]
    # Newton-Raphson for log mu = log E + a + b x, with step halving.
    a, b = math.log(kk_.sum() / ee.sum()), 0.0
    design = np.column_stack([np.ones_like(x), x])

    def loglik(a_: float, b_: float) -> float:
        return _poisson_loglik(kk_, ee * np.exp(a_ + b_ * x))

    current = loglik(a, b)
    for _ in range(100):
        mu = ee * np.exp(a + b * x)
        score = design.T @ (kk_ - mu)
        info = design.T @ (design * mu[:, None])
        step = np.linalg.solve(info, score)
        factor = 1.0
        while factor > 1e-8:
            na, nb = a + factor * step[0], b + factor * step[1]
            new = loglik(na, nb)
            if new >= current - 1e-12:
                break
            factor /= 2.0
        a, b, previous, current = na, nb, current, new
        if abs(current - previous) < 1e-12 and np.abs(step).max() < 1e-10:
            break
        if abs(b) > 50:
            raise AnalyticsInputError(
                "the trend across releases is unbounded (e.g. failures only in the first or "
                "last release): compare the per-release rates instead"
            )
    mu = ee * np.exp(a + b * x)
    info = design.T @ (design * mu[:, None])
    se_b = math.sqrt(np.linalg.inv(info)[1, 1])
    null = _poisson_loglik(kk_, ee * kk_.sum() / ee.sum())
    lr = max(0.0, 2.0 * (current - null))
    dispersion = None
    quasi = False
    factor = 1.0
    if x.size >= 3:
        dispersion = float(((kk_ - mu) ** 2 / mu).sum() / (x.size - 2))
        if dispersion > 1.0:
            quasi = True
            factor = dispersion
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    half = z * se_b * math.sqrt(factor)
    p = float(stats.chi2.sf(lr / factor, 1))
    ratio = math.exp(b)
    verdict = ("growth" if b < 0 else "deterioration") if p < alpha else "no significant trend"
    return ReleaseTrend(
        releases=tuple(rows),
        ratio_per_release=ratio,
        ratio_ci=(math.exp(b - half), math.exp(b + half)),
        lr_statistic=lr,
        p_value=p,
        dispersion=dispersion,
        quasi_poisson=quasi,
        confidence=confidence,
        per=float(per),
        verdict=verdict,
    )
