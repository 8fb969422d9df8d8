"""The adaptive fault rule on synthetic signals: quiet on normal data, fast on real departures."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.adaptive import AdaptiveRule
from agent.core.fault_types import FaultChange, FaultRule
from protocol import Sample, Severity

T0 = 1.79e9
MIN = 60.0
HOUR = 3600.0
DAY = 86400.0


def feed(rule: AdaptiveRule, points: Iterable[tuple[float, float | None]]) -> list[FaultChange]:
    """Run (ts, value) points through the rule as custom signal ``v``; collect changes."""
    changes = []
    for ts, value in points:
        custom = {} if value is None else {"v": value}
        change = rule.update(Sample(ts=ts, custom=custom))
        if change is not None:
            changes.append(change)
    return changes


def noisy(
    rng: random.Random, n: int, *, step: float = 5 * MIN, level: float = 50.0, sd: float = 1.0
) -> list[tuple[float, float]]:
    """A stationary Gaussian signal sampled every ``step`` seconds."""
    return [(T0 + i * step, level + rng.gauss(0, sd)) for i in range(n)]


def assert_restart_is_seamless(points: list[tuple[float, float]], half: int) -> dict[str, Any]:
    """A rule snapshotted (through JSON) after ``half`` points and restored into a new rule
    gives the same changes and final state as one that ran through; the snapshot."""
    whole = AdaptiveRule("v")
    expected = feed(whole, points)
    first = AdaptiveRule("v")
    feed(first, points[:half])
    state: dict[str, Any] = json.loads(json.dumps(first.snapshot()))
    resumed = AdaptiveRule("v")
    resumed.restore(state)
    assert feed(resumed, points[half:]) == expected
    assert resumed.snapshot() == whole.snapshot()
    return state


def test_satisfies_fault_rule_contract_and_reads_sample_fields() -> None:
    rule: FaultRule = AdaptiveRule("fan_rpm")
    assert rule.code == "fan_rpm_anomaly"
    assert rule.severity is Severity.WARNING
    assert not rule.active
    custom = AdaptiveRule("pump_bar", code="pump_pressure", severity=Severity.MAJOR)
    assert (custom.code, custom.severity) == ("pump_pressure", Severity.MAJOR)

    rng = random.Random(1)
    fan = AdaptiveRule("fan_rpm")
    changes = []
    for i in range(600):
        rpm = 3000 + rng.gauss(0, 20) if i < 500 else 1500 + rng.gauss(0, 20)
        change = fan.update(Sample(ts=T0 + i * MIN, fan_rpm=rpm, temp_c=40.0))
        if change:
            changes.append(change)
    assert [c.raised for c in changes] == [True]
    raised = changes[0]
    assert raised.code == "fan_rpm_anomaly"
    assert raised.value is not None
    assert raised.value < 1600
    # The threshold is the learned bound that was crossed, between the value and the normal.
    assert raised.threshold is not None
    assert raised.value < raised.threshold < 3000
    assert "fan_rpm" in raised.message
    assert "below its learned normal" in raised.message


@pytest.mark.parametrize("seed", range(12))
def test_stationary_noise_with_outliers_raises_nothing(seed: int) -> None:
    rng = random.Random(seed)
    points = []
    for ts, value in noisy(rng, 6 * 288, level=rng.uniform(-100, 3000), sd=rng.uniform(0.1, 30)):
        if rng.random() < 0.01:  # isolated outliers of up to 20 SDs
            value += rng.choice((-1, 1)) * rng.uniform(5, 20) * 30
        points.append((ts, value))
    # Student-t noise with 3 degrees of freedom: heavy tails, finite variance.
    heavy = [
        (
            ts + 7 * DAY,
            20 + rng.gauss(0, 1) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in "abc") / 3),
        )
        for ts, _ in points
    ]
    rule = AdaptiveRule("v")
    assert feed(rule, points) == []
    # Heavy tails: at most one raise in six days, for a value that is a record (far
    # beyond the largest of the days before it, see the record stage).
    assert sum(c.raised for c in feed(AdaptiveRule("v"), heavy)) <= 1


@pytest.mark.parametrize("seed", range(4))
def test_daily_seasonality_and_quantisation_raise_nothing(seed: int) -> None:
    rng = random.Random(100 + seed)
    points = [
        (ts, round(45 + 6 * math.sin(2 * math.pi * (ts - T0) / DAY) + rng.gauss(0, 0.5)))
        for ts, _ in noisy(rng, 14 * 288)
    ]
    assert feed(AdaptiveRule("v"), points) == []


def test_step_hidden_inside_a_daily_swing_is_caught_once_the_profile_is_learned() -> None:
    rng = random.Random(41)
    swing = 10.0  # daily swing of +-10 noise SDs: larger than the step below

    def value(ts: float, offset: float) -> float:
        return 50 + swing * math.sin(2 * math.pi * (ts - T0) / DAY) + offset + rng.gauss(0, 1)

    before = [(T0 + i * 5 * MIN, value(T0 + i * 5 * MIN, 0)) for i in range(10 * 288)]
    step_ts = before[-1][0] + 5 * MIN
    after = [(step_ts + i * 5 * MIN, value(step_ts + i * 5 * MIN, 8)) for i in range(288)]
    seasonal = AdaptiveRule("v")
    assert feed(seasonal, before) == []
    changes = feed(seasonal, after)
    assert changes
    assert changes[0].raised
    assert changes[0].ts - step_ts < 2 * HOUR
    # Without the profile, the same step is lost in the swing (for the plain threshold on
    # the robust score; the surprise stage, on by default since the NAB tuning, may still
    # notice it).
    plain = AdaptiveRule("v", seasonal_period_s=None, surprise_threshold=0)
    assert feed(plain, before + after) == []
    assert plain.snapshot()["season_bins"] is None


def step_after_quiet_days(
    rule: AdaptiveRule, sign: int
) -> tuple[list[tuple[float, float]], list[FaultChange]]:
    """Two quiet days (no change expected), then an 8-SD step: its points and changes."""
    rng = random.Random(7)
    before = noisy(rng, 2 * 288)
    assert feed(rule, before) == []
    step_ts = before[-1][0] + 5 * MIN
    after = [(step_ts + i * 5 * MIN, 50 + sign * 8 + rng.gauss(0, 1)) for i in range(288)]
    changes = feed(rule, after)
    assert changes
    assert changes[0].raised
    assert ("above" if sign > 0 else "below") in changes[0].message
    return after, changes


@pytest.mark.parametrize("sign", [1, -1])
def test_step_change_is_raised_within_the_debounce_window(sign: int) -> None:
    # The plain threshold on the robust score: the surprise stage would add its own latency.
    rule = AdaptiveRule("v", raise_samples=3, surprise_threshold=0)
    after, changes = step_after_quiet_days(rule, sign)
    assert changes[0].ts == after[2][0]  # the third anomalous sample completes the debounce
    assert rule.active


def test_direction_limits_what_is_flagged() -> None:
    rng = random.Random(3)
    before = noisy(rng, 2 * 288)
    drop = [(before[-1][0] + (i + 1) * 5 * MIN, 42 + rng.gauss(0, 1)) for i in range(100)]
    up_only = AdaptiveRule("v", direction="up")
    down_only = AdaptiveRule("v", direction="down")
    assert feed(up_only, before + drop) == []
    assert [c.raised for c in feed(down_only, before + drop)][:1] == [True]


def test_hysteresis_clear_and_refractory_period() -> None:
    rng = random.Random(11)
    # The plain refractory period: a fresh departure after a quiet stretch is not held
    # back by default (test_adaptive_fresh.py), so that exemption is off here.
    rule = AdaptiveRule(
        "v", refractory_s=6 * HOUR, clear_samples=5, clear_after_s=HOUR, refractory_quiet_s=0
    )
    t = T0
    points: list[tuple[float, float]] = []

    def segment(hours: float, level: float) -> None:
        nonlocal t
        for _ in range(int(hours * 12)):
            points.append((t, level + rng.gauss(0, 1)))
            t += 5 * MIN

    segment(48, 50)
    segment(1, 60)  # excursion: raise
    back_ts = t
    segment(2, 50)  # back to normal: clear after an hour below the clear threshold
    segment(1, 60)  # second excursion inside the refractory period: no raise
    segment(8, 50)
    segment(1, 60)  # after the refractory period: raise again
    changes = feed(rule, points)
    assert [c.raised for c in changes] == [True, False, True]
    cleared = changes[1]
    assert cleared.ts - back_ts >= HOUR
    assert "back within" in cleared.message
    # Hysteresis: the clear bound is closer to the normal than the raise bound.
    assert cleared.threshold is not None
    assert changes[0].threshold is not None
    assert abs(cleared.threshold - 50) < abs(changes[0].threshold - 50)
    assert changes[2].ts - cleared.ts >= 6 * HOUR


def test_slow_fan_drift_is_raised_long_before_a_fixed_limit() -> None:
    rng = random.Random(5)
    start_decay = T0 + 4 * DAY
    points = []
    for i in range(30 * 288):
        ts = T0 + i * 5 * MIN
        days = max(0.0, (ts - start_decay) / DAY)
        points.append((ts, 3000 * 0.99**days + rng.gauss(0, 30)))  # 1 %/day, 1 % noise
    fixed_limit = 2400.0  # a fixed limit at 80 % of nominal: crossed after ~22 days
    fixed_ts = start_decay + math.log(0.8) / math.log(0.99) * DAY
    changes = feed(AdaptiveRule("v"), points)
    assert changes
    assert changes[0].raised
    raised_at = changes[0].ts
    assert start_decay < raised_at
    drop = 1 - 0.99 ** ((raised_at - start_decay) / DAY)
    assert drop < 0.08  # flagged before the fan lost 8 %
    assert raised_at < fixed_ts - 10 * DAY
    assert changes[0].value is not None
    assert changes[0].value > fixed_limit
    assert "drifted" in changes[0].message or "below" in changes[0].message


def test_sustained_new_level_is_accepted_after_the_adaptation_time() -> None:
    rng = random.Random(9)
    rule = AdaptiveRule("v", rearm_after_s=None)  # without re-arming: the slow level decides
    before = noisy(rng, 3 * 288)
    after = [(before[-1][0] + (i + 1) * 5 * MIN, 60 + rng.gauss(0, 1)) for i in range(20 * 288)]
    changes = feed(rule, before + after)
    assert [c.raised for c in changes] == [True, False]
    # Documented: a sustained 10-SD step is accepted after about 3 x slow_tau_s.
    adaptation = changes[1].ts - after[0][0]
    assert 1.5 * rule.slow_tau_s < adaptation < 4 * rule.slow_tau_s
    assert not rule.active


def test_a_settled_new_level_re_arms_the_rule_for_the_next_departure() -> None:
    rng = random.Random(9)
    rule = AdaptiveRule("v")  # rearm_after_s: 12 h
    before = noisy(rng, 3 * 288)
    t1 = before[-1][0] + 5 * MIN
    after = [(t1 + i * 5 * MIN, 60 + rng.gauss(0, 1)) for i in range(3 * 288)]
    t2 = after[-1][0] + 5 * MIN
    second = [(t2 + i * 5 * MIN, 70 + rng.gauss(0, 1)) for i in range(36)]
    changes = feed(rule, before + after + second)
    assert [c.raised for c in changes] == [True, False, True]
    # Accepted once the fast level settled and stayed quiet for rearm_after_s...
    assert rule.rearm_after_s is not None
    assert rule.rearm_after_s < changes[1].ts - t1 < 2 * DAY
    # ...so the second step, three days after the first, is raised within hours (the
    # noise scale learned during the first step still makes it look smaller).
    assert changes[2].ts - t2 < 3 * HOUR
    assert "above" in changes[2].message
    stuck = AdaptiveRule("v", rearm_after_s=None)
    assert [c.raised for c in feed(stuck, before + after + second)] == [True]


def test_gaps_do_not_raise() -> None:
    rng = random.Random(21)
    rule = AdaptiveRule("v")
    first = noisy(rng, 3 * 288)
    missing = [(first[-1][0] + (i + 1) * 5 * MIN, None) for i in range(50)]
    resume = first[-1][0] + 2 * DAY  # a two-day outage; the level moved a little meanwhile
    later = [(resume + i * 5 * MIN, 53 + rng.gauss(0, 1)) for i in range(2 * 288)]
    short_gap = later[-1][0] + 3 * HOUR
    tail = [(short_gap + i * 5 * MIN, 53 + rng.gauss(0, 1)) for i in range(288)]
    assert feed(rule, first + missing + later + tail) == []


def test_missing_values_are_gaps_not_zero() -> None:
    rng = random.Random(2)
    rule = AdaptiveRule("temp_c")
    changes = []
    for i in range(3 * 288):
        temp = None if i % 3 == 0 else 50 + rng.gauss(0, 0.5)
        change = rule.update(Sample(ts=T0 + i * 5 * MIN, temp_c=temp))
        if change:
            changes.append(change)
    assert changes == []
    assert rule.snapshot()["n"] == 2 * 288


def test_irregular_sampling_works() -> None:
    rng = random.Random(13)
    t = T0
    points = []
    for _ in range(4 * 288):
        t += rng.expovariate(1 / (5 * MIN))
        points.append((t, 50 + rng.gauss(0, 1)))
    rule = AdaptiveRule("v")
    assert feed(rule, points) == []
    step = []
    for _ in range(100):
        t += rng.expovariate(1 / (5 * MIN))
        step.append((t, 60 + rng.gauss(0, 1)))
    changes = feed(rule, step)
    assert changes
    assert changes[0].raised
    assert changes[0].ts <= step[2][0]


def test_no_alarm_during_warm_up() -> None:
    rule = AdaptiveRule("v", warmup_samples=30, warmup_s=3 * HOUR)
    points = [(T0 + i * MIN, 50.0 if i < 5 else 500.0) for i in range(60)]
    assert feed(rule, points) == []


def test_snapshot_restore_mid_stream_gives_identical_output() -> None:
    rng = random.Random(17)
    levels = [50.0] * (3 * 288) + [60.0] * 100 + [50.0] * 400 + [43.0] * 300
    points = [(T0 + i * 5 * MIN, lv + rng.gauss(0, 1)) for i, lv in enumerate(levels)]
    reference = feed(AdaptiveRule("v"), points)
    assert len(reference) >= 3
    for cut in (10, 3 * 288 + 1, 3 * 288 + 50, 3 * 288 + 101, len(points) - 200):
        first = AdaptiveRule("v")
        head = feed(first, points[:cut])
        state = json.loads(json.dumps(first.snapshot()))
        resumed = AdaptiveRule("v")
        resumed.restore(state)
        assert resumed.active == first.active
        assert head + feed(resumed, points[cut:]) == reference


def test_snapshot_size_is_bounded_over_a_long_run() -> None:
    rng = random.Random(23)
    rule = AdaptiveRule("v")
    sizes = []
    keys = None
    for i in range(100_000):
        rule.update(Sample(ts=T0 + i * 10.0, custom={"v": 20 + rng.gauss(0, 2)}))
        if i % 10_000 == 9_999:
            snap = rule.snapshot()
            keys = keys or set(snap)
            assert set(snap) == keys
            sizes.append(len(json.dumps(snap)))
    # About 60 numbers plus the recurrence memory's 4 × 24, whatever the length of the run.
    assert max(sizes) < 4096
    # Once every slot of the day has been visited only the digits of numbers vary.
    assert max(sizes[3:]) - min(sizes[3:]) < 200


@pytest.mark.parametrize(
    "corrupt",
    [
        None,
        "not a dict",
        {},
        {"v": 99},
        {"v": 1, "signal": "other"},
        "truncate",
        "nan",
        "negative_count",
        "wrong_type",
        "short_profile",
    ],
)
def test_restore_ignores_corrupt_state(corrupt: object) -> None:
    rng = random.Random(29)
    donor = AdaptiveRule("v")
    feed(donor, noisy(rng, 400))
    good = donor.snapshot()
    if corrupt == "truncate":
        corrupt = dict(list(good.items())[:5])
    elif corrupt == "nan":
        corrupt = {**good, "m_f": float("nan")}
    elif corrupt == "negative_count":
        corrupt = {**good, "n": -3}
    elif corrupt == "wrong_type":
        corrupt = {**good, "s_f": "12"}
    elif corrupt == "short_profile":
        corrupt = {**good, "season_bins": good["season_bins"][:-1]}
    rule = AdaptiveRule("v")
    feed(rule, noisy(random.Random(31), 50))
    before = rule.snapshot()
    rule.restore(corrupt)  # type: ignore[arg-type]
    assert rule.snapshot() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"direction": "sideways"},
        {"raise_threshold": 2.0, "clear_threshold": 3.0},
        {"raise_samples": 0},
        {"fast_tau_s": 0.0},
        {"refractory_s": -1.0},
        {"anomaly_learning_weight": 2.0},
        {"slow_tau_s": float("inf")},
        {"surprise_threshold": -1.0},
        {"surprise_threshold": float("nan")},
        {"surprise_min_score": -1.0},
        {"surprise_min_drift_score": float("inf")},
        {"surprise_cap": 0.0},
        {"surprise_window_samples": 0.5},
        {"surprise_memory_samples": 5.0},
        {"surprise_window_s": 0.0},
        {"drift_scale_leak": 2.0},
        {"raise_samples": 2.5},
        {"clear_samples": True},
        {"seasonal_bins": 24.5},
        {"raise_samples": "3"},
        {"warmup_samples": [30]},
        {"seasonal_period_s": -1.0},
    ],
)
def test_bad_configuration_is_rejected_with_a_clear_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must"):
        AdaptiveRule("v", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signal"):
        AdaptiveRule("")


def test_whole_counts_given_as_floats_and_a_zero_period_are_accepted() -> None:
    """``2.0`` is a count (benches and TOML floats pass them so); ``seasonal_period_s``
    0 turns the daily profile off as None does, the only way a TOML file can say it."""
    rule = AdaptiveRule("v", raise_samples=2.0, seasonal_period_s=0)
    assert rule.raise_samples == 2
    assert rule.seasonal_period_s is None


def test_out_of_order_and_non_finite_samples_are_ignored() -> None:
    rng = random.Random(37)
    rule = AdaptiveRule("v")
    feed(rule, noisy(rng, 300))
    before = rule.snapshot()
    assert rule.update(Sample(ts=T0, custom={"v": 1e9})) is None  # older than the last
    assert rule.snapshot() == before


def _good_snapshot() -> dict[str, Any]:
    rule = AdaptiveRule("v")
    levels = [50.0] * (2 * 288) + [70.0] * 2  # ends with a raise pending
    feed(rule, [(T0 + i * 5 * MIN, lv + (i % 7) * 0.3) for i, lv in enumerate(levels)])
    return rule.snapshot()


_GOOD_SNAPSHOT = _good_snapshot()
_SNAPSHOT_KEYS = sorted(_GOOD_SNAPSHOT)
_STATE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=30),
)


@given(changes=st.dictionaries(st.sampled_from(_SNAPSHOT_KEYS), _STATE_VALUES, max_size=4))
@settings(max_examples=150)
def test_any_mangled_snapshot_is_ignored_or_keeps_the_rule_working(
    changes: dict[str, object],
) -> None:
    rule = AdaptiveRule("v")
    rule.restore({**_GOOD_SNAPSHOT, **changes})
    rng = random.Random(43)
    for i in range(40):  # never raises an exception, whatever was restored
        rule.update(
            Sample(ts=_GOOD_SNAPSHOT["last_ts"] + (i + 1) * 300, custom={"v": rng.random()})
        )
    assert isinstance(rule.active, bool)


@pytest.mark.parametrize("key", _SNAPSHOT_KEYS)
@pytest.mark.parametrize("value", [None, -1, 0, 1e300, True, "x", [0.0]])
def test_each_field_mangled_alone_is_ignored_or_keeps_the_rule_working(
    key: str, value: object
) -> None:
    rule = AdaptiveRule("v")
    rule.restore({**_GOOD_SNAPSHOT, key: value})
    rng = random.Random(47)
    for i in range(40):
        rule.update(
            Sample(ts=_GOOD_SNAPSHOT["last_ts"] + (i + 1) * 300, custom={"v": rng.random()})
        )
    assert isinstance(rule.active, bool)


@given(
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=3 * DAY),
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        ),
        max_size=120,
    )
)
@settings(max_examples=150)
def test_arbitrary_input_never_crashes_and_state_stays_json(
    steps: list[tuple[float, float | None]],
) -> None:
    rule = AdaptiveRule("v", warmup_samples=3, warmup_s=0.0, drift_warmup_s=0.0)
    ts = T0
    for dt, value in steps:
        ts += dt
        change = rule.update(Sample(ts=ts, custom={} if value is None else {"v": value}))
        if change is not None:
            assert change.threshold is None or math.isfinite(change.threshold)
    state = json.loads(json.dumps(rule.snapshot(), allow_nan=False))
    resumed = AdaptiveRule("v", warmup_samples=3, warmup_s=0.0, drift_warmup_s=0.0)
    resumed.restore(state)
    assert resumed.snapshot() == rule.snapshot()


def test_a_level_change_across_a_long_gap_is_judged_against_the_noise() -> None:
    rng = random.Random(53)
    before = noisy(rng, 3 * 288)
    resume = before[-1][0] + DAY
    small = [(resume + i * 5 * MIN, 52 + rng.gauss(0, 1)) for i in range(4 * 288)]
    rule = AdaptiveRule("v")
    assert feed(rule, before + small) == []  # 2 noise SDs: accepted after the gap
    # ...and the gap did not teach the rule that such jumps are normal wander:
    later = small[-1][0] + 5 * MIN
    drift = [(later + i * 5 * MIN, 52 - 3 * i / 288 + rng.gauss(0, 1)) for i in range(3 * 288)]
    changes = feed(rule, drift)
    assert changes
    assert changes[0].raised
    assert changes[0].ts - later < 1.5 * DAY

    big = AdaptiveRule("v")
    jump = [(resume + i * 5 * MIN, 60 + rng.gauss(0, 1)) for i in range(288)]
    changes = feed(big, noisy(random.Random(54), 3 * 288) + jump)
    assert [c.raised for c in changes][:1] == [True]  # 10 noise SDs: raised after warm-up
    assert changes[0].ts - resume <= 4 * HOUR


@pytest.mark.parametrize("sign", [1, -1])
def test_surprise_stage_raises_a_step_within_a_few_samples(sign: int) -> None:
    rule = AdaptiveRule("v")  # defaults: surprise stage on, two samples of debounce
    assert rule.surprise_threshold is not None
    after, changes = step_after_quiet_days(rule, sign)
    assert changes[0].ts <= after[5][0]
    assert rule.active


def test_surprise_window_is_shortened_on_an_hourly_signal() -> None:
    # Hourly samples: ten of them would make a step wait half a day before it is judged.
    rng = random.Random(41)
    before = noisy(rng, 10 * 24, step=HOUR)
    after = [(before[-1][0] + (i + 1) * HOUR, 58 + rng.gauss(0, 1)) for i in range(24)]
    sparse = AdaptiveRule("v")
    assert feed(sparse, before) == []
    changes = feed(sparse, after)
    assert changes
    assert changes[0].raised
    slow = AdaptiveRule("v", surprise_window_s=1e9)  # window of ten samples whatever the rate
    feed(slow, before)
    late = feed(slow, after)
    assert late
    assert late[0].raised
    assert changes[0].ts < late[0].ts
    # A fast signal keeps its ten-sample window: the setting only shortens sparse ones.
    assert AdaptiveRule("v")._surprise_window() == 10.0


def test_surprise_stage_does_not_cry_wolf_on_a_signal_that_often_spikes() -> None:
    # A bursty count: pairs of 8-12 SD spikes about twice a day are its normal.
    rng = random.Random(17)
    points = []
    spike_left = 0
    for ts, value in noisy(rng, 14 * 288):
        if spike_left == 0 and rng.random() < 0.007:
            spike_left = 2
        if spike_left:
            spike_left -= 1
            value += rng.uniform(8, 12)
        points.append((ts, value))
    plain = feed(AdaptiveRule("v", surprise_threshold=0), points)
    surprised = feed(AdaptiveRule("v"), points)
    raised_plain = sum(c.raised for c in plain)
    raised_surprised = sum(c.raised for c in surprised)
    assert raised_plain >= 3
    assert raised_surprised <= raised_plain // 3


def test_surprise_state_survives_a_restart_and_old_snapshots_still_load() -> None:
    rng = random.Random(23)
    points = noisy(rng, 3 * 288)
    points += [(points[-1][0] + (i + 1) * 5 * MIN, 58 + rng.gauss(0, 1)) for i in range(50)]
    state = assert_restart_is_seamless(points, 2 * 288)
    assert state["u_n"] > 0
    assert state["u_mean"] is not None
    # A snapshot written before the surprise stage existed is still restored.
    old = {k: v for k, v in state.items() if not k.startswith("u_")}
    legacy = AdaptiveRule("v")
    legacy.restore(old)
    assert legacy.snapshot()["n"] == state["n"]
    assert legacy.snapshot()["u_n"] == 0
