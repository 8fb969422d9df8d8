"""Warranty early warning: which production batches or software versions claim too much?

Input: one row per cell, e.g. (batch, months in service, calendar month) with the exposure at
risk in that cell (units, or unit-days) and the claims (failures) counted there.

Method
1. **Expected claims from the fleet's own history.** For every age stratum a (months in
   service; one stratum when no age is given) the pooled rate is
   lambda_a = sum of claims at age a / sum of exposure at age a, over all groups and periods.
   A cell's expected count is its exposure x lambda_a, so a young batch is compared with what
   the whole fleet did at the same age (infant mortality and wear-out are not mistaken for a
   bad batch). The pooled rate includes the group under test; with G groups of similar size
   an excess ratio r shows as r / (1 + (r - 1)/G), a conservative dilution that matters only
   for few groups.
2. **Overdispersion check.** Pearson chi-square of observed against expected group totals,
   df = G - 1, and the dispersion ratio phi = X^2/df. Real fleets vary more than Poisson
   (batches differ in many small ways), which would make every exact Poisson test too eager.
   When the chi-square test rejects at ``overdispersion_alpha``, the tests are widened by a
   dispersion factor estimated robustly, so that one bad batch does not hide itself by
   inflating the estimate: with >= 5 groups the median of the squared z-scores
   (O - E)/sqrt(E) divided by 0.455 (the median of a chi-square with 1 df; compare the
   winsorised estimate of Spiegelhalter 2005, "Handling over-dispersion of performance
   indicators"), with 3-4 groups the Pearson ratio without the most extreme group. The
   report says so in its notes.
3. **Exceedance test per group.** One-sided exact upper tail P(X >= observed) with
   X ~ Poisson(expected), or, when widened, X ~ negative binomial with the same mean and
   variance phi x expected (quasi-Poisson variance, exact NB tail).
4. **Multiple testing.** Benjamini-Hochberg over the groups: a group is flagged for excess
   when its adjusted p-value (q-value) is <= ``fdr`` and observed > expected. Under the
   global null this is also family-wise control at ``fdr``.
5. **CUSUM over time** (when periods are given). Per group, the Poisson likelihood-ratio
   CUSUM for a rate ratio ``cusum_ratio`` (r) against the expected counts, in count units:
   S_t = max(0, S_{t-1} + O_t - k E_t) with reference value k = (r - 1)/ln r (Lucas 1985),
   alarm when S_t >= h. The decision interval h is chosen per group so that its in-control
   average run length is ARL0 = T x G / ``family_alpha`` periods (T = periods the group is
   in service, or ``horizon``): by the union bound the chance of any false CUSUM alarm over
   the window, across all G groups, is about ``family_alpha``. The ARL is computed by the
   Markov-chain method of Brook & Evans (1972) on 60 grid points, mass between two points
   split linearly so that the mean drift is exact (checked against simulation in the
   tests), with the group's mean expected count per period (and the negative binomial
   instead of Poisson when widened). When a group expects very few claims per period, h
   can be below one claim: a single claim is then already an alarm.
6. **Ranking.** Flagged groups first (by q-value, then by observed/expected), then the rest
   by p-value.

Limits: the pooled rates and the CUSUM's expected counts use the whole window (a
retrospective analysis; rerun it each month for monitoring: the CUSUM part is sequential,
repeated looks at the exceedance test are not corrected for). The ARL uses the mean
expected count per period, an approximation when a group's exposure changes a lot.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fleet_server.analytics._stats import (
    benjamini_hochberg,
    check_confidence,
    finite_or_none,
    garwood_interval,
)
from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.rates import check_counts

_BE_STATES = 60  # Markov-chain states for the ARL computation
_CHI2_1_MEDIAN = float(stats.chi2.ppf(0.5, 1))  # 0.4549: median of z^2 for a standard normal z


@dataclass(frozen=True)
class CusumResult:
    """A group's CUSUM over the periods: settings, path summary and first alarm."""

    ratio: float
    k: float
    h: float
    arl0: float
    mean_expected: float
    max_statistic: float
    final_statistic: float
    alarm_period: object | None
    path: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "ratio": self.ratio,
            "k": self.k,
            "h": self.h,
            "arl0": self.arl0,
            "mean_expected_per_period": self.mean_expected,
            "max_statistic": self.max_statistic,
            "final_statistic": self.final_statistic,
            "alarm_period": _jsonable(self.alarm_period),
            "path": list(self.path),
        }


@dataclass(frozen=True)
class GroupSignal:
    """One group's observed and expected claims, tests and verdict."""

    rank: int
    group: str
    exposure: float
    observed: int
    expected: float
    ratio: float
    ratio_ci: tuple[float, float]
    p_value: float
    q_value: float
    test: str
    flagged: bool
    reasons: tuple[str, ...]
    cusum: CusumResult | None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "rank": self.rank,
            "group": self.group,
            "exposure": self.exposure,
            "observed": self.observed,
            "expected": self.expected,
            "ratio": finite_or_none(self.ratio),
            "ratio_ci": [finite_or_none(self.ratio_ci[0]), finite_or_none(self.ratio_ci[1])],
            "p_value": self.p_value,
            "q_value": self.q_value,
            "test": self.test,
            "flagged": self.flagged,
            "reasons": list(self.reasons),
            "cusum": None if self.cusum is None else self.cusum.to_dict(),
        }


@dataclass(frozen=True)
class Dispersion:
    """Overdispersion check across groups and the factor used to widen the tests."""

    pearson_chi2: float
    df: int
    ratio: float
    p_value: float | None
    robust_ratio: float
    robust_method: str
    used: float
    overdispersed: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "pearson_chi2": self.pearson_chi2,
            "df": self.df,
            "ratio": finite_or_none(self.ratio),
            "p_value": self.p_value,
            "robust_ratio": finite_or_none(self.robust_ratio),
            "robust_method": self.robust_method,
            "used": self.used,
            "overdispersed": self.overdispersed,
        }


@dataclass(frozen=True)
class ExpectedCell:
    """Observed and expected claims of one group at one age (summed over periods)."""

    group: str
    age: object
    exposure: float
    observed: int
    expected: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "group": self.group,
            "age": _jsonable(self.age),
            "exposure": self.exposure,
            "observed": self.observed,
            "expected": self.expected,
        }


@dataclass(frozen=True)
class EarlyWarningReport:
    """Result of ``early_warning``: ranked groups, dispersion, expected table, settings."""

    groups: tuple[GroupSignal, ...]
    dispersion: Dispersion
    reference_rates: tuple[tuple[object, float], ...]
    cells: tuple[ExpectedCell, ...]
    periods: tuple[object, ...]
    fdr: float
    family_alpha: float
    cusum_ratio: float
    total_exposure: float
    total_observed: int
    notes: tuple[str, ...]

    @property
    def flagged(self) -> tuple[GroupSignal, ...]:
        """The flagged groups, most anomalous first."""
        return tuple(g for g in self.groups if g.flagged)

    def group(self, name: str) -> GroupSignal:
        """The signal of one group by name (KeyError if unknown)."""
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary."""
        return {
            "settings": {
                "fdr": self.fdr,
                "family_alpha": self.family_alpha,
                "cusum_ratio": self.cusum_ratio,
            },
            "total_exposure": self.total_exposure,
            "total_observed": self.total_observed,
            "dispersion": self.dispersion.to_dict(),
            "flagged": [g.group for g in self.flagged],
            "groups": [g.to_dict() for g in self.groups],
            "reference_rates": [{"age": _jsonable(a), "rate": r} for a, r in self.reference_rates],
            "expected_cells": [c.to_dict() for c in self.cells],
            "periods": [_jsonable(p) for p in self.periods],
            "notes": list(self.notes),
        }


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return value


def _labels(values: Sequence[object] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    """Turn labels into a sortable array: numbers when every label is numeric."""
    if values is None:
        return np.zeros(n, dtype=np.int64)
    raw = list(values)
    if len(raw) != n:
        raise AnalyticsInputError(f"{what} ({len(raw)}) and rows ({n}) differ in length")
    try:
        nums = np.asarray([float(v) for v in raw], dtype=float)
    except (TypeError, ValueError):
        return np.asarray([str(v) for v in raw], dtype=object)
    if not np.all(np.isfinite(nums)):
        raise AnalyticsInputError(f"{what} must be finite")
    if np.all(nums == np.round(nums)):
        return nums.astype(np.int64)
    return nums


_PMF_POINTS = 1500  # at most this many support points (wider distributions are binned)


@functools.lru_cache(maxsize=1024)
def _pmf(mu: float, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Count distribution with mean mu and variance phi*mu: (support values, probabilities).

    Both tails beyond 1e-12 are dropped, so a large mean costs only its bulk; a bulk wider
    than ``_PMF_POINTS`` counts is binned, each bin at its conditional mean (the chain below
    interpolates between grid points anyway, and the mean drift is kept exactly).
    """
    poisson = phi <= 1.0 + 1e-9
    dist = stats.poisson(mu) if poisson else stats.nbinom(mu / (phi - 1.0), 1.0 / phi)
    first = max(0, int(dist.ppf(1e-12)) - 1)
    top = int(dist.isf(1e-12)) + 2
    if top - first > _PMF_DIRECT_LIMIT:
        return _binned_pmf(mu, phi, first, top)
    counts = np.arange(first, top, dtype=float)
    probs = np.asarray(dist.pmf(counts), dtype=float)
    if counts.size > _PMF_POINTS:
        edges = np.linspace(0, counts.size, _PMF_POINTS + 1).astype(np.int64)
        mass = np.add.reduceat(probs, edges[:-1])
        moment = np.add.reduceat(probs * counts, edges[:-1])
        keep = mass > 0
        counts = moment[keep] / mass[keep]
        probs = mass[keep]
    return counts, probs


_PMF_DIRECT_LIMIT = 200_000
"""Widest support evaluated count by count; a wider one (extreme overdispersion: the tail
of a negative binomial with a tiny shape runs to hundreds of millions) is binned from
the CDF without ever listing its counts, so memory stays bounded whatever the data."""


def _binned_pmf(mu: float, phi: float, first: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The binned form of :func:`_pmf` computed from CDFs: ``_PMF_POINTS`` equal-width bins
    over ``[first, top)``, each at its exact conditional mean. The partial mean uses
    ``k pmf(k) = mean * pmf'(k - 1)``, where ``pmf'`` is the same Poisson, or the negative
    binomial with shape ``n + 1``."""
    edges = np.unique(np.linspace(first, top, _PMF_POINTS + 1).astype(np.int64))
    if phi <= 1.0 + 1e-9:
        dist, shifted = stats.poisson(mu), stats.poisson(mu)
    else:
        n, p = mu / (phi - 1.0), 1.0 / phi
        dist, shifted = stats.nbinom(n, p), stats.nbinom(n + 1.0, p)
    mass = np.diff(dist.cdf(edges - 1))
    moment = mu * np.diff(shifted.cdf(edges - 2))
    keep = mass > 0
    return moment[keep] / mass[keep], mass[keep]


_CHUNK_ELEMENTS = 2_000_000  # bound on the transition-table size built at once


def _arl_batch(hs: np.ndarray, mu: float, k: float, phi: float, states: int) -> np.ndarray:
    """In-control ARLs for several decision intervals at once (stacked linear solves)."""
    counts, pmf = _pmf(mu, phi)
    out = np.ones(hs.size)
    live = np.flatnonzero(hs > 0)
    per_h = states * pmf.size
    chunk = max(1, _CHUNK_ELEMENTS // per_h)
    for start in range(0, live.size, chunk):
        sel = live[start : start + chunk]
        out[sel] = _arl_solve(hs[sel], counts, pmf, mu, k, states)
    # An alarm so unlikely that the chain is numerically absorbing-free: run length unbounded.
    return np.where(np.isfinite(out) & (out >= 1.0), out, np.inf)


def _arl_solve(
    hs: np.ndarray, counts: np.ndarray, pmf: np.ndarray, mu: float, k: float, states: int
) -> np.ndarray:
    h = hs[:, None, None]
    delta = h / states
    s = np.arange(states)[None, :, None] * delta
    nxt = np.maximum(s + counts[None, None, :] - k * mu, 0.0)
    # Mass landing between two grid points is split between them in proportion to distance
    # (linear interpolation), which keeps the mean drift exact even when the downward drift
    # k*mu is much smaller than the grid step.
    pos = nxt / delta
    low = np.floor(pos)
    frac = pos - low
    low = low.astype(np.int64)
    weights = np.broadcast_to(pmf[None, None, :], nxt.shape)
    m = hs.size
    base = (np.arange(m)[:, None, None] * states + np.arange(states)[None, :, None]) * states
    flat_parts, weight_parts = [], []
    for cell, share in ((low, 1.0 - frac), (low + 1, frac)):
        keep = (cell < states) & (nxt < h)
        flat_parts.append((base + cell)[keep])
        weight_parts.append((weights * share)[keep])
    r = np.bincount(
        np.concatenate(flat_parts),
        weights=np.concatenate(weight_parts),
        minlength=m * states * states,
    ).reshape(m, states, states)
    a = np.eye(states)[None, :, :] - r
    return np.linalg.solve(a, np.ones((m, states, 1)))[:, 0, 0]


def cusum_arl(h: float, mu: float, k: float, phi: float = 1.0, states: int = _BE_STATES) -> float:
    """In-control average run length of S' = max(0, S + X - k mu), alarm at S >= h.

    X has mean ``mu`` (Poisson, or negative binomial with variance phi*mu). Brook & Evans
    (1972) Markov chain on ``states`` grid points in [0, h), started at S = 0.
    """
    return float(_arl_batch(np.asarray([float(h)]), mu, k, phi, states)[0])


@functools.lru_cache(maxsize=4096)
def _decision_interval_cached(mu: float, k: float, target: float, phi: float) -> float:
    # Geometric grid first, then two linear refinements of the bracketing pair: each stage is
    # one stacked solve, so the search costs three calls into LAPACK.
    scale = 1.0 + math.sqrt(mu * phi)
    hs = scale * np.geomspace(0.02, 200.0, 24)
    arl = _arl_batch(hs, mu, k, phi, _BE_STATES)
    if arl[-1] < target:
        raise AnalyticsInputError(f"CUSUM run length {target:g} is beyond reach")
    j = int(np.argmax(arl >= target))
    if j == 0:
        return float(hs[0])
    upper = float(hs[j])
    for _ in range(2):
        hs = np.linspace(hs[j - 1], hs[j], 9)
        arl = _arl_batch(hs, mu, k, phi, _BE_STATES)
        ok = arl >= target
        if not ok.any():
            return upper
        j = int(np.argmax(ok))
        if j == 0:
            return float(hs[0])
        upper = float(hs[j])
    return upper


def _round_log(x: float, per_decade: int, how: Callable[[float], float]) -> float:
    """Round ``x`` > 0 on a log grid with ``per_decade`` points per factor of ten."""
    return float(10.0 ** (how(math.log10(x) * per_decade - 1e-9) / per_decade))


def decision_interval(mu: float, ratio: float, arl0: float, phi: float = 1.0) -> float:
    """Decision interval h (in counts) whose in-control ARL is at least ``arl0`` periods.

    Found on a geometric grid refined twice (to 1/64 of the bracketing step), so h is at
    most a little above the smallest such value.

    ``mu`` is the expected count per period, ``ratio`` the rate ratio the CUSUM is tuned to
    detect (reference value k = (ratio - 1)/ln ratio), ``phi`` the dispersion factor.
    """
    if not ratio > 1.0:
        raise AnalyticsInputError(f"CUSUM ratio must be > 1, got {ratio}")
    if not mu > 0:
        raise AnalyticsInputError("CUSUM needs a positive expected count per period")
    k = (ratio - 1.0) / math.log(ratio)
    # Round mu to the nearest point of a log grid (20 points per decade, within 6 %) and the
    # target run length up (10 points per decade) so that similar groups share a cached
    # answer. The mu rounding moves the ARL by up to about 20 % either way; rounding the
    # target up (by up to 26 %) offsets most of that. The CUSUM's false-alarm budget is
    # therefore approximate, as is the use of the mean expected count per period.
    mu_r = _round_log(mu, 20, round)
    target_r = _round_log(arl0, 10, math.ceil)
    phi_r = 1.0 if phi <= 1.0 else _round_log(phi, 20, math.ceil)
    return _decision_interval_cached(mu_r, k, target_r, phi_r)


def _dispersion(
    observed: np.ndarray, expected: np.ndarray, alpha: float
) -> tuple[Dispersion, list[str]]:
    notes: list[str] = []
    live = expected > 0
    o, e = observed[live].astype(float), expected[live]
    g = int(live.sum())
    df = g - 1
    if df < 1:
        disp = Dispersion(0.0, 0, math.nan, None, math.nan, "none", 1.0, False)
        return disp, ["fewer than 2 groups with expected claims: no overdispersion check"]
    z = (o - e) / np.sqrt(e)
    chi2 = float((z**2).sum())
    ratio = chi2 / df
    p = float(stats.chi2.sf(chi2, df))
    if g >= 5:
        robust = float(np.median(z**2) / _CHI2_1_MEDIAN)
        method = "median of squared z-scores / 0.455 (robust to a few bad groups)"
    elif g >= 3:
        drop = int(np.argmax(np.abs(z)))
        robust = float((np.delete(z, drop) ** 2).sum() / (g - 2))
        method = "Pearson without the most extreme group"
    else:
        robust = ratio
        method = "Pearson (too few groups for a robust estimate)"
    overdispersed = p < alpha
    used = max(1.0, robust) if overdispersed else 1.0
    if overdispersed:
        notes.append(
            f"claims vary more than Poisson across groups (dispersion {ratio:.2f}, p={p:.3g}); "
            + (
                f"tests widened by a factor {used:.2f} (negative binomial)"
                if used > 1.0
                else "the excess is concentrated in a few groups, tests not widened"
            )
        )
    disp = Dispersion(chi2, df, ratio, p, robust, method, used, overdispersed)
    return disp, notes


def early_warning(
    groups: Sequence[object] | np.ndarray,
    exposure: Sequence[float] | np.ndarray,
    failures: Sequence[float] | np.ndarray,
    *,
    age: Sequence[object] | np.ndarray | None = None,
    period: Sequence[object] | np.ndarray | None = None,
    fdr: float = 0.05,
    cusum_ratio: float = 2.0,
    family_alpha: float = 0.05,
    horizon: int | None = None,
    overdispersion_alpha: float = 0.05,
    confidence: float = 0.95,
) -> EarlyWarningReport:
    """Flag groups (batches, software versions) whose claim rate is anomalously high.

    One row per cell: ``groups`` (label), ``exposure`` (units or unit-days at risk),
    ``failures`` (claims), optional ``age`` (months in service, for age-matched expected
    counts) and ``period`` (calendar period, enables the CUSUM). See the module docstring for
    the method. Returns the groups ranked, most anomalous first.
    """
    for name, value in (("fdr", fdr), ("family_alpha", family_alpha)):
        if not 0.0 < value < 1.0:
            raise AnalyticsInputError(f"{name} must be between 0 and 1, got {value}")
    if not cusum_ratio > 1.0:
        raise AnalyticsInputError(f"cusum_ratio must be > 1, got {cusum_ratio}")
    if horizon is not None and horizon < 1:
        raise AnalyticsInputError(f"horizon must be >= 1 period, got {horizon}")
    confidence = check_confidence(confidence)
    e, k = check_counts(exposure, failures)
    n = e.size
    labels = np.asarray([str(g) for g in groups], dtype=object)
    if labels.size != n:
        raise AnalyticsInputError(f"groups ({labels.size}) and rows ({n}) differ in length")
    ages = _labels(age, n, "age")
    names, gi = np.unique(labels, return_inverse=True)
    age_values, ai = np.unique(ages, return_inverse=True)
    if names.size < 2:
        raise AnalyticsInputError("early warning compares groups: need at least 2 groups")

    exp_a = np.bincount(ai, weights=e, minlength=age_values.size)
    obs_a = np.bincount(ai, weights=k, minlength=age_values.size)
    rate_a = np.divide(obs_a, exp_a, out=np.zeros_like(obs_a), where=exp_a > 0)
    expected_row = e * rate_a[ai]

    g_count = names.size
    obs_g = np.bincount(gi, weights=k, minlength=g_count).astype(np.int64)
    exp_g = np.bincount(gi, weights=expected_row, minlength=g_count)
    expo_g = np.bincount(gi, weights=e, minlength=g_count)
    notes: list[str] = []
    if int(k.sum()) == 0:
        notes.append("no claims at all: nothing to compare")
    dispersion, disp_notes = _dispersion(obs_g, exp_g, overdispersion_alpha)
    notes.extend(disp_notes)
    phi = dispersion.used

    p = np.ones(g_count)
    for j in range(g_count):
        if exp_g[j] > 0 and obs_g[j] > 0:
            if phi > 1.0:
                p[j] = stats.nbinom.sf(obs_g[j] - 1, exp_g[j] / (phi - 1.0), 1.0 / phi)
            else:
                p[j] = stats.poisson.sf(obs_g[j] - 1, exp_g[j])
    q = benjamini_hochberg(p)
    excess = (q <= fdr) & (obs_g > exp_g)

    cusums: list[CusumResult | None] = [None] * g_count
    period_values: tuple[object, ...] = ()
    if period is not None:
        periods = _labels(period, n, "period")
        pv, pi = np.unique(periods, return_inverse=True)
        period_values = tuple(_jsonable(v) for v in pv)
        t_count = pv.size
        o_gt = np.zeros((g_count, t_count))
        e_gt = np.zeros((g_count, t_count))
        x_gt = np.zeros((g_count, t_count))
        np.add.at(o_gt, (gi, pi), k)
        np.add.at(e_gt, (gi, pi), expected_row)
        np.add.at(x_gt, (gi, pi), e)
        live_groups = int((exp_g > 0).sum())
        kk = (cusum_ratio - 1.0) / math.log(cusum_ratio)
        for j in range(g_count):
            active = x_gt[j] > 0
            mu = float(e_gt[j][active].mean()) if active.any() else 0.0
            if mu <= 0:
                continue
            span = horizon if horizon is not None else int(active.sum())
            arl0 = span * live_groups / family_alpha
            h = decision_interval(mu, cusum_ratio, arl0, phi)
            s, smax, alarm = 0.0, 0.0, None
            path = []
            for t in range(t_count):
                s = max(0.0, s + o_gt[j, t] - kk * e_gt[j, t])
                path.append(s)
                smax = max(smax, s)
                if alarm is None and s >= h:
                    alarm = period_values[t]
            cusums[j] = CusumResult(
                cusum_ratio, kk, h, arl0, mu, smax, s, alarm, tuple(round(v, 6) for v in path)
            )

    test_name = "negative_binomial" if phi > 1.0 else "poisson"
    signals = []
    for j in range(g_count):
        reasons = []
        if excess[j]:
            reasons.append(f"claims above expectation (q={q[j]:.3g} <= {fdr:g})")
        c = cusums[j]
        if c is not None and c.alarm_period is not None:
            reasons.append(f"CUSUM alarm in period {c.alarm_period}")
        lo, hi = garwood_interval(int(obs_g[j]), confidence)
        ratio = obs_g[j] / exp_g[j] if exp_g[j] > 0 else math.nan
        ci = (lo / exp_g[j], hi / exp_g[j]) if exp_g[j] > 0 else (math.nan, math.nan)
        signals.append(
            GroupSignal(
                0,
                str(names[j]),
                float(expo_g[j]),
                int(obs_g[j]),
                float(exp_g[j]),
                float(ratio),
                ci,
                float(p[j]),
                float(q[j]),
                test_name,
                bool(reasons),
                tuple(reasons),
                c,
            )
        )
    signals.sort(
        key=lambda s: (
            not s.flagged,
            s.q_value if s.flagged else s.p_value,
            -(s.ratio if math.isfinite(s.ratio) else 0.0),
            s.group,
        )
    )
    ranked = tuple(dataclasses.replace(s, rank=i + 1) for i, s in enumerate(signals))

    cell_o: dict[tuple[int, int], float] = {}
    cell_e: dict[tuple[int, int], float] = {}
    cell_x: dict[tuple[int, int], float] = {}
    for j, a, ee, kk_, ex in zip(gi, ai, e, k, expected_row, strict=True):
        key = (int(j), int(a))
        cell_o[key] = cell_o.get(key, 0.0) + kk_
        cell_e[key] = cell_e.get(key, 0.0) + ex
        cell_x[key] = cell_x.get(key, 0.0) + ee
    cells = tuple(
        ExpectedCell(
            str(names[j]),
            _jsonable(age_values[a]),
            cell_x[(j, a)],
            int(cell_o[(j, a)]),
            cell_e[(j, a)],
        )
        for j, a in sorted(cell_o)
    )
    return EarlyWarningReport(
        groups=ranked,
        dispersion=dispersion,
        reference_rates=tuple(
            (_jsonable(a), float(r)) for a, r in zip(age_values, rate_a, strict=True)
        ),
        cells=cells,
        periods=period_values,
        fdr=fdr,
        family_alpha=family_alpha,
        cusum_ratio=cusum_ratio,
        total_exposure=float(e.sum()),
        total_observed=int(k.sum()),
        notes=tuple(notes),
    )
