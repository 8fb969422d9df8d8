"""Weibull fits against published answers and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from fleet_server.analytics import AnalyticsInputError
from fleet_server.analytics.weibull import (
    b_life,
    plotting_positions,
    weibull_mle,
    weibull_rank_regression,
)

# Lieblein & Zelen (1956) ball-bearing endurance data, millions of revolutions, 23 failures.
BALL_BEARINGS = [
    17.88, 28.92, 33.00, 41.52, 42.12, 45.60, 48.48, 51.84, 51.96, 54.12, 55.56, 67.80,
    68.64, 68.64, 68.88, 84.12, 93.12, 98.64, 105.12, 105.84, 127.92, 128.04, 173.40,
]  # fmt: skip

# Kececioglu's six units, as used in the ReliaWiki / Weibull++ reference examples.
SIX_UNITS = [16, 34, 53, 75, 93, 120]

# A censored data set (times in hours; False = still running / removed without failing).
CENSORED_T = [
    150, 340, 560, 800, 1130, 1720, 2470, 4210, 5230, 6890,
    300, 900, 1500, 2000, 2500, 3000, 3500, 4000, 7000, 9000,
]  # fmt: skip
CENSORED_F = [True] * 10 + [False] * 10


def _loglik(t: np.ndarray, f: np.ndarray, beta: float, eta: float) -> float:
    z = (t / eta) ** beta
    return float(
        (f * (math.log(beta) - math.log(eta) + (beta - 1) * np.log(t / eta))).sum() - z.sum()
    )


def test_mle_matches_lawless_ball_bearing_answer() -> None:
    # Lawless, Statistical Models and Methods for Lifetime Data (2nd ed., 2003), ball-bearing
    # example: extreme-value MLEs u = 4.405, b = 0.476, i.e. eta = e^u = 81.9, beta = 1/b = 2.10.
    fit = weibull_mle(BALL_BEARINGS)
    assert fit.beta == pytest.approx(2.102, abs=5e-3)
    assert fit.eta == pytest.approx(81.88, abs=0.05)
    assert math.log(fit.eta) == pytest.approx(4.405, abs=1e-3)
    assert 1.0 / fit.beta == pytest.approx(0.476, abs=1e-3)
    assert fit.n_failures == 23
    assert fit.n_censored == 0


def test_complete_sample_mle_agrees_with_scipy() -> None:
    rng = np.random.default_rng(7)
    t = stats.weibull_min.rvs(1.7, scale=500.0, size=60, random_state=rng)
    fit = weibull_mle(t)
    shape, _, scale = stats.weibull_min.fit(t, floc=0)
    assert fit.beta == pytest.approx(shape, rel=1e-4)
    assert fit.eta == pytest.approx(scale, rel=1e-4)


def test_censored_mle_is_the_likelihood_maximum_found_by_brute_force() -> None:
    t, f = np.array(CENSORED_T, float), np.array(CENSORED_F)
    fit = weibull_mle(t, f)
    # Independent: a fine grid search, refined by Nelder-Mead on the raw log-likelihood.
    betas = np.linspace(0.3, 3.0, 271)
    etas = np.exp(np.linspace(math.log(1000), math.log(50000), 400))
    grid = np.array([[_loglik(t, f, b, e) for e in etas] for b in betas])
    i, j = np.unravel_index(np.argmax(grid), grid.shape)
    res = optimize.minimize(
        lambda p: -_loglik(t, f, p[0], p[1]), [betas[i], etas[j]], method="Nelder-Mead",
        options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 5000},
    )  # fmt: skip
    assert fit.beta == pytest.approx(res.x[0], rel=1e-4)
    assert fit.eta == pytest.approx(res.x[1], rel=1e-4)
    assert fit.log_likelihood == pytest.approx(-res.fun, abs=1e-6)
    assert fit.n_failures == 10
    assert fit.n_censored == 10
    # Ignoring the censored units (treating them as failures) would understate life.
    assert fit.eta > weibull_mle(t).eta


def test_standard_errors_are_the_observed_information_by_finite_differences() -> None:
    t, f = np.array(CENSORED_T, float), np.array(CENSORED_F)
    fit = weibull_mle(t, f)
    x0 = np.array([fit.beta, fit.eta])
    h = x0 * 1e-4
    hess = np.zeros((2, 2))
    for a in range(2):
        for b in range(2):
            ea, eb = np.eye(2)[a] * h[a], np.eye(2)[b] * h[b]
            hess[a, b] = (
                _loglik(t, f, *(x0 + ea + eb))
                - _loglik(t, f, *(x0 + ea - eb))
                - _loglik(t, f, *(x0 - ea + eb))
                + _loglik(t, f, *(x0 - ea - eb))
            ) / (4 * h[a] * h[b])
    cov = np.linalg.inv(-hess)
    assert fit.se_beta == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-3)
    assert fit.se_eta == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-3)


def test_likelihood_ratio_intervals_sit_where_the_profile_drops_by_chi2_over_2() -> None:
    t, f = np.array(CENSORED_T, float), np.array(CENSORED_F)
    fit = weibull_mle(t, f, confidence=0.90, b_percent=10)
    drop = stats.chi2.ppf(0.90, 1) / 2.0
    ll_max = fit.log_likelihood

    def profile_beta(beta: float) -> float:
        r = optimize.minimize_scalar(
            lambda le: -_loglik(t, f, beta, math.exp(le)), bounds=(0, 15), method="bounded",
            options={"xatol": 1e-10},
        )  # fmt: skip
        return -r.fun

    def profile_b10(xp: float) -> float:
        c = -math.log(0.9)

        def neg(lb: float) -> float:
            beta = math.exp(lb)
            return -_loglik(t, f, beta, xp * c ** (-1.0 / beta))

        return -optimize.minimize_scalar(
            neg, bounds=(-5, 3), method="bounded", options={"xatol": 1e-10}
        ).fun

    for bound in fit.beta_ci:
        assert profile_beta(bound) == pytest.approx(ll_max - drop, abs=1e-4)
    for bound in fit.b_life_ci:
        assert profile_b10(bound) == pytest.approx(ll_max - drop, abs=1e-4)
    lo, hi = fit.eta_ci
    assert lo < fit.eta < hi
    assert fit.b_life_ci[0] < fit.b_life < fit.b_life_ci[1]
    assert fit.b_life == pytest.approx(fit.eta * (-math.log(0.9)) ** (1 / fit.beta))


def test_counts_are_the_same_as_repeated_rows() -> None:
    t = [100.0, 250.0, 400.0, 600.0, 800.0]
    failed = [True, True, False, True, False]
    counts = [3, 2, 50, 1, 40]
    grouped = weibull_mle(t, failed, counts)
    expanded = weibull_mle(np.repeat(t, counts), np.repeat(failed, counts))
    assert grouped.beta == pytest.approx(expanded.beta, rel=1e-9)
    assert grouped.eta == pytest.approx(expanded.eta, rel=1e-9)
    assert grouped.n_units == 96
    assert grouped.n_failures == 6


def test_rank_regression_on_y_with_exact_median_ranks_matches_reliawiki() -> None:
    # ReliaWiki, "The Weibull Distribution", rank regression on Y example on Kececioglu's six
    # units: exact median ranks 0.1091 ... 0.8909, sums ln t = 23.9068 and y = -3.007,
    # slope beta = 1.4301; the intercept a = mean(y) - beta mean(ln t) gives eta = e^(-a/beta).
    fit = weibull_rank_regression(SIX_UNITS, plotting_position="median", regression="y_on_x")
    assert fit.beta == pytest.approx(1.4301, abs=1e-4)
    a = -3.007 / 6 - 1.4301 * 23.9068 / 6
    assert fit.eta == pytest.approx(math.exp(-a / 1.4301), abs=0.02)
    published = [0.1091, 0.2645, 0.4214, 0.5786, 0.7355, 0.8909]
    assert plotting_positions(6, "median") == pytest.approx(published, abs=1.5e-4)


def test_rank_regression_with_bernard_ranks_matches_published_example() -> None:
    # Hexagon EAM Reliability Analysis documentation, same six failure times with Bernard's
    # approximation: beta = 1.42696711, eta = 76.3454156 (regression of Y on X).
    fit = weibull_rank_regression(SIX_UNITS, plotting_position="bernard", regression="y_on_x")
    assert fit.beta == pytest.approx(1.42696711, abs=1e-6)
    assert fit.eta == pytest.approx(76.3454156, abs=1e-4)


def test_rank_regression_x_on_y_is_the_least_squares_line_of_log_time_on_y() -> None:
    fit = weibull_rank_regression(SIX_UNITS)  # defaults: Bernard, X on Y
    x = np.log(np.sort(SIX_UNITS))
    y = np.log(-np.log(1 - (np.arange(1, 7) - 0.3) / 6.4))
    slope, intercept = np.linalg.lstsq(np.column_stack([y, np.ones(6)]), x, rcond=None)[0]
    assert fit.beta == pytest.approx(1 / slope, rel=1e-12)
    assert fit.eta == pytest.approx(math.exp(intercept), rel=1e-12)
    assert fit.regression == "x_on_y"
    assert fit.plotting_position == "bernard"
    assert 0.98 < fit.r_squared <= 1.0


def test_b_life_definition() -> None:
    assert b_life(2.0, 1000.0, 10) == pytest.approx(1000.0 * math.sqrt(-math.log(0.9)))
    assert b_life(1.0, 1000.0, 63.212055882855766) == pytest.approx(1000.0)


@pytest.mark.parametrize(
    ("times", "failed", "message"),
    [
        ([10.0, 20.0, 30.0], [True, False, False], "at least 2 failures"),
        ([10.0, -5.0, 30.0], None, "> 0"),
        ([10.0, 0.0], None, "> 0"),
        ([10.0, float("nan")], None, "finite"),
        ([], None, "no observations"),
        ([50.0, 50.0, 50.0], None, "same age"),
        ([10.0, 20.0], [True], "differ in length"),
    ],
)
def test_bad_life_data_gets_a_clear_error(
    times: list[float], failed: list[bool] | None, message: str
) -> None:
    with pytest.raises(AnalyticsInputError, match=message):
        weibull_mle(times, failed)


def test_rank_regression_refuses_censored_data_and_points_to_mle() -> None:
    with pytest.raises(AnalyticsInputError, match="maximum likelihood"):
        weibull_rank_regression([10, 20, 30], [True, False, True])


def test_fit_serialises_to_strict_json() -> None:
    import json

    for fit in (weibull_mle(CENSORED_T, CENSORED_F), weibull_rank_regression(SIX_UNITS)):
        text = json.dumps(fit.to_dict(), allow_nan=False)
        assert json.loads(text)["beta"] == pytest.approx(fit.beta)
