"""The record stage's tail: learned per unit of time, so a routine daily spike at the
agent's 10 s sampling interval is not a record, while on an hourly signal a lone big spike
days after the last one is; its state survives a restart and a bad one is refused."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import DAY, HOUR, MIN, T0, assert_restart_is_seamless, feed


def daily_spikes(
    seed: int, *, step: float = 10.0, days: int = 30, lone: bool = False
) -> list[tuple[float, float]]:
    """N(50, 1) every ``step`` seconds with, once a day at a random time, a spike of 15 to
    40 SDs up or down lasting 1 to 3 samples (one with ``lone``)."""
    rng = random.Random(seed)
    spikes: dict[int, float] = {}
    for day in range(days):
        first = int((day * DAY + rng.uniform(0, DAY)) / step)
        length = 1 if lone else rng.randint(1, 3)
        height = rng.uniform(15, 40) * rng.choice((1, -1))
        for k in range(length):
            spikes[first + k] = height
    return [
        (T0 + i * step, 50 + rng.gauss(0, 1) + spikes.get(i, 0.0))
        for i in range(int(days * DAY / step))
    ]


def test_a_young_signal_s_routine_spikes_raise_no_more_than_before_the_tail() -> None:
    # In its first week the tail has seen few routine spikes, so the peak forgets over a
    # week as it did before the tail (a two-day peak gave extra records on days 1 to 5).
    def raises(**kwargs: Any) -> int:
        return sum(
            sum(c.raised for c in feed(AdaptiveRule("v", **kwargs), series))
            for series in (daily_spikes(seed, step=HOUR, days=7, lone=True) for seed in range(6))
        )

    assert raises() <= raises(record_tail_ratio=None, record_tau_s=7 * DAY)


def test_the_tail_means_the_same_at_10_s_5_min_and_1_h_sampling() -> None:
    tails = []
    for step in (10.0, 5 * MIN, HOUR):
        rule = AdaptiveRule("v")
        feed(rule, daily_spikes(7, step=step, days=8, lone=True))
        tails.append(rule.snapshot()["tail"])
    # About the size of the daily spike's score whatever the interval (17 to 27 here; the
    # hourly signal's scores are a little smaller, as its spikes weigh more in its noise
    # scale). Learned per sample the tail was 3.5, 6.7 and 12: at 10 s the daily spike was
    # beyond its 99.9 % quantile, so the tail held the noise instead.
    assert min(tails) >= 12.0
    assert max(tails) / min(tails) <= 2.0


def hourly_with_spikes(rng: random.Random, at_days: list[float]) -> list[tuple[float, float]]:
    """Hourly N(50, 1) for 16 days with a 40-SD spike at each of ``at_days``."""
    spikes = {round(d * 24) for d in at_days}
    return [(T0 + i * HOUR, 50 + rng.gauss(0, 1) + (40 if i in spikes else 0)) for i in range(384)]


def test_a_lone_big_spike_days_after_the_last_one_is_raised_at_1_h_sampling() -> None:
    # Past the rule's first week (in which the peak still forgets over a week).
    points = hourly_with_spikes(random.Random(11), [9.0, 13.0])
    raised = [c.ts for c in feed(AdaptiveRule("v"), points) if c.raised]
    assert raised == [T0 + 216 * HOUR, T0 + 312 * HOUR]  # both, on the spike itself
    # The rule before the tail (a 7-day peak) took the second for routine.
    before = AdaptiveRule("v", record_tau_s=7 * DAY, record_tail_ratio=0)
    assert [c.ts for c in feed(before, points) if c.raised] == [T0 + 216 * HOUR]


def test_a_record_teaches_the_tail_only_winsorised() -> None:
    points = hourly_with_spikes(random.Random(12), [])
    points[96] = (points[96][0], 1e4)  # a record of 10,000 SDs
    rule = AdaptiveRule("v")
    feed(rule, points[:96])
    before = rule.snapshot()["tail"]
    feed(rule, points[96:97])
    assert rule.active
    assert rule.snapshot()["tail"] <= 3.0 * before


def student_t2(rng: random.Random, days: int) -> list[tuple[float, float]]:
    """Student-t noise with 2 degrees of freedom (infinite variance) every 5 minutes: large
    values are routine, a few days apart."""
    return [
        (
            T0 + i * 5 * MIN,
            20 + rng.gauss(0, 1) / math.sqrt((rng.gauss(0, 1) ** 2 + rng.gauss(0, 1) ** 2) / 2),
        )
        for i in range(days * 288)
    ]


def test_the_tail_keeps_routine_heavy_tailed_values_from_being_records() -> None:
    # The two-day peak forgets a large value before the next one comes; the tail remembers
    # that such values are routine.
    with_tail = without_tail = 0
    for seed in range(10):
        points = student_t2(random.Random(seed), 10)
        with_tail += sum(c.raised for c in feed(AdaptiveRule("v"), points))
        off = AdaptiveRule("v", record_tail_ratio=0)
        without_tail += sum(c.raised for c in feed(off, points))
    assert with_tail < without_tail


def test_tail_state_survives_a_restart_and_old_snapshots_load() -> None:
    points = daily_spikes(21, step=5 * MIN, days=4, lone=True)
    state = assert_restart_is_seamless(points, 288)
    assert state["tail"] > 1.0
    assert state["tail_ts"] is not None
    # A snapshot written before the tail existed loads; the tail starts neutral.
    legacy = AdaptiveRule("v")
    legacy.restore({k: v for k, v in state.items() if k not in ("tail", "tail_ts")})
    assert legacy.snapshot()["n"] == state["n"]
    assert legacy.snapshot()["tail"] == 1.0
    assert legacy.snapshot()["tail_ts"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {"tail": 0.5},
        {"tail": -3.0},
        {"tail": float("nan")},
        {"tail": float("inf")},
        {"tail": 1e9},  # would block records for years
        {"tail": "4"},
        {"tail": 4.0, "tail_ts": None},
        {"tail": None},
        {"tail_ts": float("nan")},
    ],
)
def test_a_bad_tail_is_refused_whole(bad: dict[str, Any]) -> None:
    state = AdaptiveRule("v")
    feed(state, daily_spikes(22, step=5 * MIN, days=2))
    snapshot = state.snapshot()
    assert snapshot["tail"] > 1.0
    refused = AdaptiveRule("v")
    refused.restore({**snapshot, **bad})
    assert refused.snapshot() == AdaptiveRule("v").snapshot()  # a fresh rule


@pytest.mark.parametrize(
    "kwargs",
    [
        {"record_tail_ratio": -1.0},
        {"record_tail_ratio": 0.5},  # a tail that could never learn
        {"record_tail_ratio": float("nan")},
        {"record_tail_tau_s": 0.0},
        {"record_tail_tau_s": float("inf")},
    ],
)
def test_bad_tail_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="record_tail"):
        AdaptiveRule("v", **kwargs)  # type: ignore[arg-type]


def test_one_event_teaches_the_tail_about_once_however_many_samples_it_spans() -> None:
    # A 5-minute spike of 30 SDs at 10 s sampling is 30 samples of one event: only the
    # first counts in full (the next rises come seconds after it), so the tail moves about
    # one half-step (x sqrt(3) at most), not 30 of them (learned per sample it would reach
    # the spike's size).
    rng = random.Random(31)
    points = [(T0 + i * 10.0, 50 + rng.gauss(0, 1)) for i in range(int(6 * HOUR / 10))]
    rule = AdaptiveRule("v")
    feed(rule, points)
    before = rule.snapshot()["tail"]
    spike = [(T0 + 6 * HOUR + i * 10.0, 80 + rng.gauss(0, 1)) for i in range(30)]
    feed(rule, spike)
    assert rule.snapshot()["tail"] <= math.sqrt(3.0) * before * 1.1


def test_the_tail_does_not_learn_while_a_fault_is_raised() -> None:
    rng = random.Random(32)
    points = noisy_minutes(rng, 2 * DAY)
    rule = AdaptiveRule("v")
    feed(rule, points)
    before = rule.snapshot()["tail"]
    shifted = [(T0 + 2 * DAY + i * MIN, 70 + rng.gauss(0, 1)) for i in range(6 * 60)]
    changes = feed(rule, shifted)
    assert changes
    assert changes[0].raised
    assert rule.active
    # Only the samples before the raise may teach it: at most one half-step.
    assert rule.snapshot()["tail"] <= math.sqrt(3.0) * before * 1.01


def noisy_minutes(rng: random.Random, span_s: float) -> list[tuple[float, float]]:
    """N(50, 1) every minute for ``span_s`` seconds."""
    return [(T0 + i * MIN, 50 + rng.gauss(0, 1)) for i in range(int(span_s / MIN))]
