"""Warranty early warning on synthetic claim streams, and its statistical building blocks.

The synthetic fleet: 12 production batches of 3000 units, batch b enters service in month
b, observed for 24 calendar months. Claims per unit-month at age a (months in service)
follow an infant-mortality curve 0.001 * (1 + 2 exp(-a/2)), so young batches claim more
than old ones without being bad. A bad batch claims ``ratio`` times the curve.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fleet_server.analytics import AnalyticsInputError
from fleet_server.analytics._stats import benjamini_hochberg
from fleet_server.analytics.claims import cusum_arl, decision_interval, early_warning

BATCHES, MONTHS, UNITS, BASE = 12, 24, 3000, 0.001


def claim_stream(
    seed: int, bad: int | None = None, ratio: float = 3.0, spread_cv: float = 0.0
) -> dict[str, np.ndarray]:
    """Cells (batch, age, calendar month, units, claims) of one synthetic fleet."""
    rng = np.random.default_rng(seed)
    mult = np.ones(BATCHES)
    if spread_cv > 0:  # batch-to-batch variation beyond Poisson (overdispersion)
        mult = rng.gamma(1 / spread_cv**2, spread_cv**2, size=BATCHES)
    if bad is not None:
        mult[bad] = ratio
    cols: dict[str, list[object]] = {k: [] for k in ("group", "age", "period", "units", "claims")}
    for b in range(BATCHES):
        for t in range(b, MONTHS):
            age = t - b
            lam = BASE * (1 + 2 * math.exp(-age / 2)) * mult[b]
            cols["group"].append(f"B{b:02d}")
            cols["age"].append(age)
            cols["period"].append(t)
            cols["units"].append(UNITS)
            cols["claims"].append(rng.poisson(UNITS * lam))
    return {k: np.asarray(v) for k, v in cols.items()}


def analyse(s: dict[str, np.ndarray], upto: int | None = None, **kw: object):
    sel = np.ones(s["period"].size, bool) if upto is None else s["period"] <= upto
    return early_warning(
        s["group"][sel], s["units"][sel], s["claims"][sel], age=s["age"][sel],
        period=s["period"][sel], **kw,
    )  # fmt: skip


def months_to_detection(s: dict[str, np.ndarray], bad: int) -> int | None:
    """Months in service of the bad batch when a monthly rerun first flags it."""
    for month in range(bad, MONTHS):
        report = analyse(s, upto=month)
        if any(g.group == f"B{bad:02d}" for g in report.flagged):
            return month - bad + 1
    return None


def test_bad_batch_at_three_times_the_rate_is_flagged_within_three_months() -> None:
    # Stated detection delay: a batch claiming 3x the fleet's age-matched rate is flagged by
    # the monthly rerun within its first 3 months in service, in every one of 20 streams.
    delays = [months_to_detection(claim_stream(1000 + s, bad=6, ratio=3.0), 6) for s in range(20)]
    assert all(d is not None and d <= 3 for d in delays), delays


def test_bad_batch_at_twice_the_rate_is_flagged_within_its_first_year_mostly() -> None:
    # A 2x batch: flagged within 12 months in service in at least 18 of 20 streams and before
    # the window ends (18 months) in all of them; median delay <= 4 months.
    delays = [months_to_detection(claim_stream(2000 + s, bad=6, ratio=2.0), 6) for s in range(20)]
    assert all(d is not None for d in delays), delays
    assert sum(d <= 12 for d in delays) >= 18, delays  # type: ignore[operator]
    assert np.median(delays) <= 4, delays


def test_flagged_bad_batch_ranks_first_with_its_reasons() -> None:
    report = analyse(claim_stream(5, bad=3, ratio=2.5))
    top = report.groups[0]
    assert top.group == "B03"
    assert top.rank == 1
    assert top.flagged
    assert any("above expectation" in r for r in top.reasons)
    assert top.ratio > 1.5
    assert top.ratio_ci[0] > 1.0
    assert top.cusum is not None
    assert top.cusum.alarm_period is not None


def test_clean_streams_stay_quiet_within_the_false_alarm_budget() -> None:
    # Budget per stream: BH at q = 0.05 is family-wise 0.05 under the global null, and the
    # CUSUM thresholds give about 0.05 for any false alarm over the window, so at most ~10% of
    # clean streams may raise any flag. Over 200 seeds that is 20 expected; 30 is the 99.5%
    # quantile of Binomial(200, 0.10).
    noisy = sum(bool(analyse(claim_stream(seed)).flagged) for seed in range(200))
    assert noisy <= 30, f"{noisy} of 200 clean streams raised a flag"


def test_age_matching_keeps_young_batches_from_looking_bad() -> None:
    # At month 11 the two newest batches are in their infant-mortality months: compared with
    # the fleet at the same age they are normal; against the all-ages rate they look about
    # 1.6x worse than they are (the infant-mortality curve averaged over the fleet's ages).
    s = claim_stream(11)
    sel = s["period"] <= 11
    matched = analyse(s, upto=11)
    unmatched = early_warning(s["group"][sel], s["units"][sel], s["claims"][sel])

    def young_ratio(report: object) -> float:
        young = [report.group(name) for name in ("B10", "B11")]  # type: ignore[attr-defined]
        return sum(g.observed for g in young) / sum(g.expected for g in young)

    assert not matched.flagged
    assert 0.6 < young_ratio(matched) < 1.4
    assert young_ratio(unmatched) > 1.3 * young_ratio(matched)


def test_overdispersed_fleet_is_detected_and_the_tests_widened() -> None:
    widened_alarms = poisson_alarms = 0
    for seed in range(30):
        s = claim_stream(300 + seed, spread_cv=0.3)
        report = analyse(s)
        forced_poisson = analyse(s, overdispersion_alpha=1e-300)
        widened_alarms += bool(report.flagged)
        poisson_alarms += bool(forced_poisson.flagged)
        if report.dispersion.overdispersed and report.dispersion.used > 1:
            assert report.groups[0].test == "negative_binomial"
            assert any("widened" in n for n in report.notes)
    assert widened_alarms < poisson_alarms
    # With batches varying +-30 %, exact Poisson tests cry wolf on most streams.
    assert poisson_alarms >= 15


def test_exact_poisson_tail_matches_the_series() -> None:
    groups = ["a", "b", "c", "d", "e", "f"]
    report = early_warning(groups, [1000.0] * 6, [5, 6, 4, 5, 7, 13])
    assert not report.dispersion.overdispersed
    f = report.group("f")
    mean = 40 / 6
    tail = 1.0 - sum(math.exp(-mean) * mean**x / math.factorial(x) for x in range(13))
    assert f.expected == pytest.approx(mean)
    assert f.test == "poisson"
    assert f.p_value == pytest.approx(tail, rel=1e-9)


def test_benjamini_hochberg_matches_the_published_example() -> None:
    # Benjamini & Hochberg (1995), JRSS B 57:289-300, section 4: 15 p-values; at q = 0.05
    # the procedure rejects the four smallest (Bonferroni only three).
    p = np.array([
        0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
        0.4262, 0.5719, 0.6528, 0.7590, 1.0000,
    ])  # fmt: skip
    q = benjamini_hochberg(p)
    assert (q <= 0.05).sum() == 4
    assert (p * 15 <= 0.05).sum() == 3
    shuffled = np.random.default_rng(0).permutation(15)
    assert benjamini_hochberg(p[shuffled]) == pytest.approx(q[shuffled])


@pytest.mark.parametrize("mu", [4.0, 0.05])
def test_cusum_average_run_length_agrees_with_simulation(mu: float) -> None:
    # Brook-Evans ARL against a direct simulation of the chart (an independent computation),
    # including a small expected count where the downward drift is far below one claim.
    ratio = 2.0
    h = decision_interval(mu, ratio, arl0=200.0)
    k = (ratio - 1) / math.log(ratio)
    rng = np.random.default_rng(3)
    lengths = []
    for _ in range(1500):
        s, n = 0.0, 0
        while s < h:
            n += 1
            s = max(0.0, s + rng.poisson(mu) - k * mu)
        lengths.append(n)
    mean = float(np.mean(lengths))
    se = float(np.std(lengths) / math.sqrt(len(lengths)))
    assert abs(mean - cusum_arl(h, mu, k)) < 4 * se + 0.03 * mean


def test_cusum_threshold_grows_with_the_required_run_length() -> None:
    assert decision_interval(2.0, 2.0, 1000.0) > decision_interval(2.0, 2.0, 100.0)
    # Overdispersed counts need a higher threshold for the same ARL.
    assert decision_interval(2.0, 2.0, 1000.0, phi=2.0) > decision_interval(2.0, 2.0, 1000.0)


@pytest.mark.parametrize(
    ("groups", "exposure", "failures", "message"),
    [
        (["a", "a"], [10.0, 10.0], [1, 2], "at least 2 groups"),
        (["a", "b"], [10.0, -1.0], [1, 0], "exposure must be"),
        (["a", "b"], [10.0, 0.0], [1, 2], "no exposure"),
        (["a", "b"], [10.0, 5.0], [1, 0.5], "whole numbers"),
        (["a", "b", "c"], [10.0, 5.0], [1, 0], "differ in length"),
    ],
)
def test_bad_claims_input_gets_a_clear_error(
    groups: list[str], exposure: list[float], failures: list[float], message: str
) -> None:
    with pytest.raises(AnalyticsInputError, match=message):
        early_warning(groups, exposure, failures)


def test_report_is_strict_json_with_expected_cells() -> None:
    report = analyse(claim_stream(9, bad=2))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["flagged"][0] == "B02"
    cells = [c for c in data["expected_cells"] if c["group"] == "B00" and c["age"] == 0]
    assert len(cells) == 1
    ages = {r["age"]: r["rate"] for r in data["reference_rates"]}
    assert cells[0]["expected"] == pytest.approx(UNITS * ages[0])
    # Young ages carry the infant-mortality excess in the fleet's own reference rates.
    assert ages[0] > ages[10]


def test_no_claims_means_no_flags() -> None:
    report = early_warning(["a", "b", "c"], [100.0, 200.0, 300.0], [0, 0, 0], period=[1, 1, 1])
    assert report.flagged == ()
    assert any("no claims" in n for n in report.notes)
    assert stats.poisson.sf(-1, 1.0) == 1.0  # p-value of "at least 0 claims" is 1
    assert all(g.p_value == 1.0 for g in report.groups)


@settings(max_examples=25)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.floats(min_value=1.0, max_value=1e7),
            st.integers(min_value=0, max_value=3000),
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=8),
        ),
        min_size=2,
        max_size=30,
    )
)
def test_any_valid_claims_table_gives_a_consistent_ranking(
    rows: list[tuple[str, float, int, int, int]],
) -> None:
    groups, exposure, failures, age, period = (list(c) for c in zip(*rows, strict=True))
    if len(set(groups)) < 2:
        with pytest.raises(AnalyticsInputError):
            early_warning(groups, exposure, failures, age=age, period=period)
        return
    report = early_warning(groups, exposure, failures, age=age, period=period)
    assert [g.rank for g in report.groups] == list(range(1, len(set(groups)) + 1))
    assert sum(g.observed for g in report.groups) == sum(failures)
    assert sum(g.expected for g in report.groups) == pytest.approx(sum(failures))
    for g in report.groups:
        assert 0.0 <= g.p_value <= g.q_value <= 1.0
        assert not g.flagged or g.reasons
        if any("above expectation" in r for r in g.reasons):
            assert g.observed > g.expected
    flagged_ranks = [g.rank for g in report.groups if g.flagged]
    assert flagged_ranks == list(range(1, len(flagged_ranks) + 1))
    json.dumps(report.to_dict(), allow_nan=False)


def test_extreme_overdispersion_stays_bounded_in_memory() -> None:
    """A batch whose counts vary wildly (dispersion ~7e7) once made the count distribution
    list 5e8 support points (3.8 GiB) and took the process down; it is binned from the CDF
    instead, with its mean kept."""
    from fleet_server.analytics import claims

    counts, probs = claims._pmf.__wrapped__(0.7079457843841379, 70794578.43841374)
    assert counts.size <= claims._PMF_POINTS
    assert probs.sum() == pytest.approx(1.0, abs=1e-9)
    assert float((counts * probs).sum()) == pytest.approx(0.708, rel=0.01)
