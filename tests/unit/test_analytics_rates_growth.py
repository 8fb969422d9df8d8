"""Rates with exact intervals and reliability growth, against published answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize

from fleet_server.analytics import AnalyticsInputError
from fleet_server.analytics._stats import garwood_interval
from fleet_server.analytics.growth import crow_amsaa, release_trend
from fleet_server.analytics.rates import rates_by_group

# ReliaWiki, "Crow-AMSAA Model Examples", failure times model: 22 failures of a prototype
# with design changes during the test, failure-terminated at 620 h. Published MLEs:
# beta = 0.6142, lambda = 0.4239 (sum ln T_i = 105.6355).
CROW_TIMES = [
    2.7, 10.3, 12.5, 30.6, 57.0, 61.3, 80.0, 109.5, 125.0, 128.6, 143.8, 167.9, 229.2, 296.7,
    320.6, 328.2, 366.2, 396.7, 421.1, 438.2, 501.2, 620.0,
]  # fmt: skip


def test_garwood_intervals_match_the_tabulated_exact_poisson_limits() -> None:
    # Exact 95 % limits for a Poisson count (Garwood 1936, Biometrika 28:437), as printed in
    # standard tables of exact Poisson limits: 0 -> [0, 3.689] (the exact "rule of three"),
    # 1 -> [0.0253, 5.572], 10 -> [4.795, 18.390].
    assert garwood_interval(0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert garwood_interval(1) == pytest.approx((0.0253, 5.572), abs=1e-3)
    assert garwood_interval(10) == pytest.approx((4.795, 18.390), abs=1e-3)


def test_rates_aggregate_rows_by_group_with_exact_intervals() -> None:
    table = rates_by_group(
        ["rev1", "rev1", "rev2", "rev3"], [500.0, 500.0, 2000.0, 1000.0], [4, 6, 5, 0], per=1000
    )
    by_name = {g.group: g for g in table.groups}
    assert by_name["rev1"].failures == 10
    assert by_name["rev1"].rate == pytest.approx(10.0)
    assert (by_name["rev1"].lower, by_name["rev1"].upper) == pytest.approx(
        (4.795, 18.390), abs=1e-3
    )
    assert by_name["rev3"].rate == 0.0
    assert by_name["rev3"].upper == pytest.approx(3.689, abs=1e-3)
    assert [g.group for g in table.groups] == ["rev1", "rev2", "rev3"]  # highest rate first
    assert table.pooled.rate == pytest.approx(15 / 4000 * 1000)
    # Pearson chi-square of counts against exposure shares: 10, 5, 0 vs 3.75, 7.5, 3.75.
    assert table.chi2 == pytest.approx(
        (10 - 3.75) ** 2 / 3.75 + (5 - 7.5) ** 2 / 7.5 + (0 - 3.75) ** 2 / 3.75
    )
    assert table.df == 2
    assert table.p_homogeneity < 0.01
    json.dumps(table.to_dict(), allow_nan=False)


def test_rates_reject_bad_rows() -> None:
    with pytest.raises(AnalyticsInputError, match="no exposure"):
        rates_by_group(["a"], [0.0], [3])
    with pytest.raises(AnalyticsInputError, match="per must be"):
        rates_by_group(["a"], [1.0], [0], per=0)


def test_crow_amsaa_matches_the_reliawiki_example() -> None:
    fit = crow_amsaa(CROW_TIMES)  # failure-terminated
    assert float(np.log(CROW_TIMES).sum()) == pytest.approx(105.6355, abs=1e-4)
    assert fit.beta == pytest.approx(0.6142, abs=1e-4)
    assert fit.lam == pytest.approx(0.4239, abs=1e-4)
    assert fit.termination == "failure"
    assert fit.beta_unbiased == pytest.approx(fit.beta * 20 / 22)
    assert fit.intensity_at_end == pytest.approx(fit.lam * fit.beta * 620 ** (fit.beta - 1))
    assert fit.mtbf_instantaneous == pytest.approx(1 / fit.intensity_at_end)
    lo, hi = fit.beta_ci
    assert lo < fit.beta < hi < 1.0  # growth is significant
    assert fit.p_growth < 0.01


def test_crow_amsaa_time_terminated_uses_the_end_of_observation() -> None:
    fit = crow_amsaa(CROW_TIMES, end_time=700.0)
    n = len(CROW_TIMES)
    assert fit.beta == pytest.approx(n / float(np.log(700.0 / np.array(CROW_TIMES)).sum()))
    assert fit.lam == pytest.approx(n / 700.0**fit.beta)
    assert fit.beta_unbiased == pytest.approx(fit.beta * (n - 1) / n)
    assert fit.trend_df == 2 * n


def test_crow_amsaa_sees_no_growth_in_a_homogeneous_poisson_process() -> None:
    # Over many simulated constant-rate processes the "growth" p-value is uniform: about 5 %
    # fall below 0.05.
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(400):
        t = np.sort(rng.uniform(0, 1000.0, size=rng.poisson(30)))
        hits += crow_amsaa(t, end_time=1000.0).p_growth < 0.05
    assert 8 <= hits <= 36  # Binomial(400, 0.05): mean 20, ~99.9 % range


def test_crow_amsaa_rejects_bad_input() -> None:
    with pytest.raises(AnalyticsInputError, match="before the last failure"):
        crow_amsaa([10.0, 20.0], end_time=15.0)
    with pytest.raises(AnalyticsInputError, match=">= 3 failures"):
        crow_amsaa([10.0, 20.0])
    with pytest.raises(AnalyticsInputError, match="> 0"):
        crow_amsaa([0.0, 20.0, 30.0])


def test_release_trend_agrees_with_a_direct_likelihood_maximisation() -> None:
    exposure = np.array([1000.0, 1200.0, 1500.0, 2000.0])
    failures = np.array([40, 30, 25, 20])
    trend = release_trend(["1.0", "1.1", "1.2", "1.3"], exposure, failures)
    x = np.arange(4.0)

    def nll(p: np.ndarray) -> float:
        mu = exposure * np.exp(p[0] + p[1] * x)
        return float((mu - failures * np.log(mu)).sum())

    res = optimize.minimize(nll, [math.log(0.02), 0.0], method="Nelder-Mead",
                            options={"xatol": 1e-10, "fatol": 1e-12})  # fmt: skip
    assert math.log(trend.ratio_per_release) == pytest.approx(res.x[1], abs=1e-5)
    assert trend.verdict == "growth"
    assert trend.ratio_ci[1] < 1.0
    assert [r.release for r in trend.releases] == ["1.0", "1.1", "1.2", "1.3"]
    assert trend.releases[0].rate == pytest.approx(0.04)
    json.dumps(trend.to_dict(), allow_nan=False)


def test_release_trend_flags_deterioration_and_stays_quiet_on_flat_data() -> None:
    worse = release_trend(["a", "b", "c"], [1000.0, 1000.0, 1000.0], [10, 20, 40])
    assert worse.verdict == "deterioration"
    flat = release_trend(["a", "b", "c"], [1000.0, 1000.0, 1000.0], [20, 21, 19])
    assert flat.verdict == "no significant trend"
    assert flat.ratio_ci[0] < 1.0 < flat.ratio_ci[1]


def test_release_trend_widens_for_overdispersed_releases() -> None:
    trend = release_trend(list("abcde"), [1000.0] * 5, [10, 60, 15, 80, 30])
    assert trend.quasi_poisson
    assert trend.dispersion is not None
    assert trend.dispersion > 1


def test_release_trend_rejects_degenerate_input() -> None:
    with pytest.raises(AnalyticsInputError, match=">= 2 releases"):
        release_trend(["a", "a"], [10.0, 10.0], [1, 1])
    with pytest.raises(AnalyticsInputError, match="no failures"):
        release_trend(["a", "b"], [10.0, 10.0], [0, 0])
