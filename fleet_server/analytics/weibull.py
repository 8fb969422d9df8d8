"""Two-parameter Weibull life-data fits: maximum likelihood with right censoring, rank regression.

Model: F(t) = 1 - exp(-(t/eta)^beta), shape ``beta`` > 0, scale ``eta`` > 0 (the age by which
63.2 % of units have failed). The B-p life is the age by which p % have failed:
B_p = eta * (-ln(1 - p/100))^(1/beta).

Maximum likelihood (``weibull_mle``)
    Failures contribute the density, right-censored units (suspensions: still running, or
    removed without failing) the survival function. For a fixed beta the likelihood is
    maximised in closed form by eta(beta) = (sum_i w_i t_i^beta / r)^(1/beta) (r = number of
    failures), so the fit solves the one-dimensional profile equation in beta

        sum w t^beta ln t / sum w t^beta - 1/beta - mean over failures of ln t = 0,

    whose left side increases strictly in beta: a bracketing root finder (Brent) finds the
    unique root, no starting value needed. Times are rescaled by their maximum first so that
    t^beta never overflows.

    Uncertainty: standard errors from the observed Fisher information (the negative Hessian
    of the log-likelihood at the estimate, analytic). Two kinds of two-sided intervals are
    reported for beta, eta and the B-life:

    * ``*_ci`` - likelihood-ratio (profile likelihood) intervals: the set of values whose
      profile log-likelihood is within chi2(1, conf)/2 of the maximum. Better coverage for
      small samples and heavy censoring; this is the primary interval.
    * ``*_ci_wald`` - Fisher-matrix (Wald) intervals on the log scale, e.g.
      beta * exp(+-z se(beta)/beta); B-life through the delta method on ln B_p.

Rank regression (``weibull_rank_regression``), complete samples only
    Plotting position: Bernard's approximation to the median rank, F_i = (i - 0.3)/(n + 0.4)
    (default), or the exact median rank (the median of a Beta(i, n - i + 1)). Linearisation:
    x = ln t, y = ln(-ln(1 - F)). Default regression is X on Y (horizontal residuals;
    recommended by Abernethy's New Weibull Handbook because the ranks, not the times, are the
    fixed quantities); Y on X is available. No confidence intervals are given for rank
    regression: use the MLE for those.

All functions take plain arrays and return frozen dataclasses with ``to_dict()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

from fleet_server.analytics._stats import check_confidence, finite_or_none
from fleet_server.analytics.errors import AnalyticsInputError

PlottingPosition = Literal["bernard", "median"]
RegressionDirection = Literal["x_on_y", "y_on_x"]


@dataclass(frozen=True)
class WeibullFit:
    """Result of a Weibull fit. Intervals are (lower, upper) at ``confidence``."""

    method: str
    beta: float
    eta: float
    n_units: int
    n_failures: int
    n_censored: int
    b_percent: float
    b_life: float
    confidence: float | None
    log_likelihood: float | None = None
    se_beta: float | None = None
    se_eta: float | None = None
    beta_ci: tuple[float, float] | None = None
    eta_ci: tuple[float, float] | None = None
    b_life_ci: tuple[float, float] | None = None
    beta_ci_wald: tuple[float, float] | None = None
    eta_ci_wald: tuple[float, float] | None = None
    b_life_ci_wald: tuple[float, float] | None = None
    interval_method: str | None = None
    plotting_position: str | None = None
    regression: str | None = None
    r_squared: float | None = None
    notes: tuple[str, ...] = ()

    def b(self, percent: float) -> float:
        """B-life for another percentage, e.g. ``fit.b(1.0)`` for B1."""
        return b_life(self.beta, self.eta, percent)

    def reliability(self, t: float) -> float:
        """Probability that a unit survives beyond age ``t``."""
        return float(math.exp(-((t / self.eta) ** self.beta)))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dictionary (infinite values become null)."""

        def pair(p: tuple[float, float] | None) -> list[float | None] | None:
            return None if p is None else [finite_or_none(p[0]), finite_or_none(p[1])]

        return {
            "method": self.method,
            "beta": self.beta,
            "eta": self.eta,
            "n_units": self.n_units,
            "n_failures": self.n_failures,
            "n_censored": self.n_censored,
            "b_percent": self.b_percent,
            "b_life": self.b_life,
            "confidence": self.confidence,
            "log_likelihood": self.log_likelihood,
            "se_beta": self.se_beta,
            "se_eta": self.se_eta,
            "beta_ci": pair(self.beta_ci),
            "eta_ci": pair(self.eta_ci),
            "b_life_ci": pair(self.b_life_ci),
            "beta_ci_wald": pair(self.beta_ci_wald),
            "eta_ci_wald": pair(self.eta_ci_wald),
            "b_life_ci_wald": pair(self.b_life_ci_wald),
            "interval_method": self.interval_method,
            "plotting_position": self.plotting_position,
            "regression": self.regression,
            "r_squared": self.r_squared,
            "notes": list(self.notes),
        }


def b_life(beta: float, eta: float, percent: float = 10.0) -> float:
    """Age by which ``percent`` % of units have failed: eta * (-ln(1 - p))^(1/beta)."""
    _check_percent(percent)
    return float(eta * (-math.log1p(-percent / 100.0)) ** (1.0 / beta))


def _check_percent(percent: float) -> None:
    if not 0.0 < percent < 100.0:
        raise AnalyticsInputError(f"B-life percentage must be between 0 and 100, got {percent}")


def _prepare(
    times: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None,
    counts: Sequence[float] | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=float).ravel()
    if t.size == 0:
        raise AnalyticsInputError("no observations: need times to failure or censoring")
    f = np.ones(t.size, dtype=bool) if failed is None else np.asarray(failed, dtype=bool).ravel()
    w = np.ones(t.size) if counts is None else np.asarray(counts, dtype=float).ravel()
    if f.size != t.size or w.size != t.size:
        raise AnalyticsInputError(
            f"times ({t.size}), failed ({f.size}) and counts ({w.size}) differ in length"
        )
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        bad = int(np.flatnonzero(~np.isfinite(t) | (t <= 0))[0])
        raise AnalyticsInputError(f"times must be finite and > 0 (observation {bad}: {t[bad]})")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w != np.round(w)):
        raise AnalyticsInputError("counts must be whole numbers >= 0")
    keep = w > 0
    t, f, w = t[keep], f[keep], w[keep]
    # Identical (time, status) rows add up: the likelihood depends only on the totals, and
    # field data (ages in whole days, thousands of units still running) shrinks a lot.
    key = np.stack([t, f.astype(float)])
    uniq, inverse = np.unique(key, axis=1, return_inverse=True)
    if uniq.shape[1] < t.size:
        w = np.bincount(inverse.ravel(), weights=w, minlength=uniq.shape[1])
        t, f = uniq[0], uniq[1].astype(bool)
    return t, f, w


def _require_failures(t: np.ndarray, f: np.ndarray, w: np.ndarray) -> None:
    r = float(w[f].sum())
    if r < 2:
        raise AnalyticsInputError(
            f"a Weibull fit needs at least 2 failures, got {r:g} "
            "(with fewer, only a bound on eta for an assumed beta (Weibayes) is possible)"
        )
    if np.unique(t[f]).size < 2 and t[f].max() >= t.max():
        raise AnalyticsInputError(
            "all failures happened at the same age and no unit ran longer: the shape is "
            "not identifiable (beta would be infinite)"
        )


class _Censored:
    """Log-likelihood pieces on times rescaled by their maximum (so t <= 1)."""

    def __init__(self, t: np.ndarray, f: np.ndarray, w: np.ndarray) -> None:
        self.scale = float(t.max())
        self.ln_t = np.log(t / self.scale)
        self.w = w
        self.wf = w * f
        self.r = float(self.wf.sum())
        self.sum_ln_tf = float((self.wf * self.ln_t).sum())

    def profile_score(self, beta: float) -> float:
        """Left side of the profile equation; increasing in beta, zero at the MLE."""
        a = beta * self.ln_t
        e = self.w * np.exp(a - a.max())
        return float((e * self.ln_t).sum() / e.sum() - 1.0 / beta - self.sum_ln_tf / self.r)

    def eta_given_beta(self, beta: float) -> float:
        """Closed-form maximiser of the likelihood in ln(eta) for a fixed beta (scaled)."""
        a = beta * self.ln_t
        m = a.max()
        return float((m + math.log((self.w * np.exp(a - m)).sum() / self.r)) / beta)

    def loglik(self, beta: float, ln_eta: float) -> float:
        """Log-likelihood at (beta, eta) with eta on the scaled log axis."""
        lz = beta * (self.ln_t - ln_eta)
        with np.errstate(over="ignore"):
            cum = float((self.w * np.exp(lz)).sum())
        return (
            self.r * math.log(beta)
            - self.r * ln_eta
            + (beta - 1.0) * (self.sum_ln_tf - self.r * ln_eta)
            - cum
        )

    def profile(self, beta: float) -> float:
        """Profile log-likelihood in beta."""
        return self.loglik(beta, self.eta_given_beta(beta))

    def profile_at_quantile(self, ln_xp: float, c: float) -> float:
        """Max over beta of the log-likelihood with the (1 - e^-c) quantile fixed at x_p.

        eta = x_p * c^(-1/beta); the log-likelihood is strictly concave in beta along that
        curve, so its score has one root, found by bracketing.
        """
        u = self.ln_t - ln_xp
        ln_c = math.log(c)

        def score(beta: float) -> float:
            with np.errstate(over="ignore"):
                return float(
                    self.r / beta + (self.wf * u).sum() - c * (self.w * np.exp(beta * u) * u).sum()
                )

        umax = float(np.abs(u).max()) or 1.0
        hi = min(1e4, 600.0 / umax)
        lo = 1e-6
        beta = hi if score(hi) > 0 else optimize.brentq(score, lo, hi, xtol=1e-12, rtol=1e-12)
        ln_eta = ln_xp - ln_c / beta
        return self.loglik(beta, ln_eta)


def _solve_beta(model: _Censored) -> float:
    lo, hi = 1e-3, 10.0
    while model.profile_score(lo) > 0:
        lo /= 10.0
        if lo < 1e-12:
            raise AnalyticsInputError("could not bracket the Weibull shape (beta -> 0)")
    while model.profile_score(hi) < 0:
        hi *= 10.0
        if hi > 1e7:
            raise AnalyticsInputError(
                "the Weibull shape is unbounded: failures are (nearly) all at the same age"
            )
    return float(optimize.brentq(model.profile_score, lo, hi, xtol=1e-14, rtol=1e-13))


def _lr_bounds(
    profile: Callable[[float], float], center: float, target: float
) -> tuple[float, float]:
    """Where a profile log-likelihood (unimodal, maximal at ``center``) falls to ``target``.

    Walks outwards on the log axis with growing steps until the profile is below the target,
    then bisects. Returns 0 or infinity for a side that never falls below the target.
    """

    def g(x: float) -> float:
        try:
            value = float(profile(math.exp(x))) - target
        except (ValueError, ZeroDivisionError, OverflowError, FloatingPointError):
            return -math.inf
        return value if math.isfinite(value) else -math.inf

    x0 = math.log(center)
    out: list[float] = []
    for direction in (-1.0, 1.0):
        inside, step, bound = x0, 0.02, math.nan
        for _ in range(60):
            probe = inside + direction * step
            if g(probe) < 0:
                lo, hi = inside, probe
                for _ in range(80):
                    mid = 0.5 * (lo + hi)
                    if g(mid) >= 0:
                        lo = mid
                    else:
                        hi = mid
                bound = 0.5 * (lo + hi)
                break
            inside, step = probe, step * 1.6
        if math.isnan(bound):
            out.append(0.0 if direction < 0 else math.inf)
        else:
            out.append(math.exp(bound))
    return out[0], out[1]


def weibull_mle(
    times: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None = None,
    counts: Sequence[float] | np.ndarray | None = None,
    *,
    confidence: float = 0.95,
    b_percent: float = 10.0,
) -> WeibullFit:
    """Fit a two-parameter Weibull by maximum likelihood with right censoring.

    ``times``: age at failure or at censoring (> 0, any unit: hours, days, months).
    ``failed``: True for a failure, False for a right-censored unit (default: all failed).
    ``counts``: optional number of identical units per row (e.g. 500 units still running at
    12 months). Needs at least 2 failures. Returns estimates, observed-information standard
    errors, likelihood-ratio intervals (``*_ci``) and Fisher-matrix intervals
    (``*_ci_wald``) for beta, eta and the B-life.
    """
    confidence = check_confidence(confidence)
    _check_percent(b_percent)
    t, f, w = _prepare(times, failed, counts)
    _require_failures(t, f, w)
    model = _Censored(t, f, w)
    beta = _solve_beta(model)
    ln_eta_s = model.eta_given_beta(beta)
    eta = math.exp(ln_eta_s) * model.scale
    ll_max_scaled = model.loglik(beta, ln_eta_s)
    # The log-likelihood in original units differs by -r * ln(scale) (Jacobian of failures).
    log_likelihood = ll_max_scaled - model.r * math.log(model.scale)

    # Observed information (analytic) at the MLE, original units.
    tt = t / eta
    lnz = np.log(tt)
    z = tt**beta
    r = model.r
    d2_bb = -r / beta**2 - float((w * z * lnz**2).sum())
    d2_ee = (beta / eta**2) * (r - (beta + 1.0) * float((w * z).sum()))
    d2_be = -r / eta + float((w * z).sum()) / eta + (beta / eta) * float((w * z * lnz).sum())
    info = -np.array([[d2_bb, d2_be], [d2_be, d2_ee]])
    notes: list[str] = []
    try:
        cov = np.linalg.inv(info)
        se_beta = math.sqrt(cov[0, 0])
        se_eta = math.sqrt(cov[1, 1])
    except (np.linalg.LinAlgError, ValueError):
        cov = np.full((2, 2), math.nan)
        se_beta = se_eta = math.nan
        notes.append("observed information is singular: no standard errors")

    z_crit = float(stats.norm.ppf(0.5 + confidence / 2.0))
    beta_wald = (
        beta * math.exp(-z_crit * se_beta / beta),
        beta * math.exp(z_crit * se_beta / beta),
    )
    eta_wald = (eta * math.exp(-z_crit * se_eta / eta), eta * math.exp(z_crit * se_eta / eta))
    c = -math.log1p(-b_percent / 100.0)
    bp = eta * c ** (1.0 / beta)
    grad = np.array([-math.log(c) / beta**2, 1.0 / eta])
    se_ln_bp = math.sqrt(max(float(grad @ cov @ grad), 0.0)) if np.all(np.isfinite(cov)) else 0.0
    bp_wald = (bp * math.exp(-z_crit * se_ln_bp), bp * math.exp(z_crit * se_ln_bp))

    target = ll_max_scaled - float(stats.chi2.ppf(confidence, 1)) / 2.0
    beta_ci = _lr_bounds(model.profile, beta, target)
    eta_ci_s = _lr_bounds(
        lambda x: model.profile_at_quantile(math.log(x), 1.0), math.exp(ln_eta_s), target
    )
    bp_s = bp / model.scale
    bp_ci_s = _lr_bounds(lambda x: model.profile_at_quantile(math.log(x), c), bp_s, target)
    eta_ci = (eta_ci_s[0] * model.scale, eta_ci_s[1] * model.scale)
    bp_ci = (bp_ci_s[0] * model.scale, bp_ci_s[1] * model.scale)

    n_units = int(w.sum())
    n_fail = round(r)
    if n_fail < 10:
        notes.append(
            f"only {n_fail} failures: the MLE of beta is biased upwards in small samples and "
            "the intervals are wide; treat the fit as indicative"
        )
    if n_fail == n_units and n_units <= 10:
        notes.append("small complete sample: rank regression (--method rr) is customary here")
    return WeibullFit(
        method="mle",
        beta=beta,
        eta=eta,
        n_units=n_units,
        n_failures=n_fail,
        n_censored=n_units - n_fail,
        b_percent=float(b_percent),
        b_life=bp,
        confidence=confidence,
        log_likelihood=log_likelihood,
        se_beta=finite_or_none(se_beta),
        se_eta=finite_or_none(se_eta),
        beta_ci=beta_ci,
        eta_ci=eta_ci,
        b_life_ci=bp_ci,
        beta_ci_wald=beta_wald,
        eta_ci_wald=eta_wald,
        b_life_ci_wald=bp_wald,
        interval_method="likelihood ratio (profile); Wald on log scale from observed information",
        notes=tuple(notes),
    )


def plotting_positions(n: int, kind: PlottingPosition = "bernard") -> np.ndarray:
    """Median-rank plotting positions F_1..F_n for a complete sample of size ``n``.

    ``bernard``: (i - 0.3) / (n + 0.4). ``median``: exact median of Beta(i, n - i + 1).
    """
    i = np.arange(1, n + 1, dtype=float)
    if kind == "bernard":
        return (i - 0.3) / (n + 0.4)
    if kind == "median":
        return np.asarray(stats.beta.ppf(0.5, i, n - i + 1.0), dtype=float)
    raise AnalyticsInputError(f"unknown plotting position {kind!r}: use 'bernard' or 'median'")


def weibull_rank_regression(
    times: Sequence[float] | np.ndarray,
    failed: Sequence[bool] | np.ndarray | None = None,
    counts: Sequence[float] | np.ndarray | None = None,
    *,
    plotting_position: PlottingPosition = "bernard",
    regression: RegressionDirection = "x_on_y",
    b_percent: float = 10.0,
) -> WeibullFit:
    """Fit a Weibull by median-rank regression on a complete (uncensored) sample.

    Sorted failure times get median-rank plotting positions (Bernard's approximation by
    default), then a least-squares line through (ln t, ln(-ln(1 - F))): X on Y by default
    (horizontal residuals), or Y on X. Censored data are refused: use ``weibull_mle``.
    """
    _check_percent(b_percent)
    if regression not in ("x_on_y", "y_on_x"):
        raise AnalyticsInputError(f"unknown regression {regression!r}: use 'x_on_y' or 'y_on_x'")
    t, f, w = _prepare(times, failed, counts)
    if not np.all(f):
        raise AnalyticsInputError(
            "rank regression here handles complete samples only; the data contain censored "
            "units: use maximum likelihood (method 'mle'), which handles censoring exactly"
        )
    t = np.sort(np.repeat(t, w.astype(int)))
    n = t.size
    if n < 2 or np.unique(t).size < 2:
        raise AnalyticsInputError("rank regression needs at least 2 distinct failure times")
    x = np.log(t)
    y = np.log(-np.log1p(-plotting_positions(n, plotting_position)))
    r = float(np.corrcoef(x, y)[0, 1])
    if regression == "y_on_x":
        slope, intercept = np.polyfit(x, y, 1)
        beta = float(slope)
        eta = float(math.exp(-intercept / slope))
    else:
        slope, intercept = np.polyfit(y, x, 1)
        beta = float(1.0 / slope)
        eta = float(math.exp(intercept))
    notes = ["rank regression gives no confidence intervals; use MLE for intervals"]
    return WeibullFit(
        method="rank_regression",
        beta=beta,
        eta=eta,
        n_units=n,
        n_failures=n,
        n_censored=0,
        b_percent=float(b_percent),
        b_life=b_life(beta, eta, b_percent),
        confidence=None,
        plotting_position=plotting_position,
        regression=regression,
        r_squared=r * r,
        notes=tuple(notes),
    )
