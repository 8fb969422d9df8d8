"""The adaptive rule's variance score and its handling of daily gaps when already warm."""

from __future__ import annotations

import random

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import DAY, HOUR, MIN, T0, assert_restart_is_seamless, feed


def _noise_then_rougher(
    seed: int, sd_after: float, hours: int = 6
) -> tuple[list[tuple[float, float]], float]:
    """Three days of N(50, 1) every 5 min, then ``hours`` with noise SD ``sd_after``."""
    rng = random.Random(seed)
    calm = [(T0 + i * 5 * MIN, 50 + rng.gauss(0, 1)) for i in range(3 * 288)]
    start = calm[-1][0] + 5 * MIN
    rough = [(start + i * 5 * MIN, 50 + rng.gauss(0, sd_after)) for i in range(hours * 12)]
    return calm + rough, start


@pytest.mark.parametrize("seed", [1, 2])
def test_a_variance_increase_alone_is_raised(seed: int) -> None:
    points, start = _noise_then_rougher(seed, 2.5, hours=12)  # the level does not move
    changes = feed(AdaptiveRule("v"), points)
    assert changes
    assert changes[0].raised
    assert start < changes[0].ts < start + 6 * HOUR
    # Without the variance score these scattered 3-SD samples never look surprising.
    assert feed(AdaptiveRule("v", variance_ratio=None), points) == []


def test_variance_score_is_quiet_on_a_smooth_or_stepping_signal() -> None:
    rng = random.Random(4)
    # A slow random walk: rough relative to nothing, but always as rough as itself.
    level, walk = 50.0, []
    for i in range(6 * 288):
        level += rng.gauss(0, 0.2)
        walk.append((T0 + i * 5 * MIN, level))
    assert feed(AdaptiveRule("v"), walk) == feed(AdaptiveRule("v", variance_ratio=None), walk)
    # One clean step: a single large sample-to-sample change is not more noise.
    points, start = _noise_then_rougher(5, 1.0)
    step = [(ts, v + (8 if ts >= start else 0)) for ts, v in points]
    assert not [c for c in feed(AdaptiveRule("v"), step) if "noisier" in c.message]


def _daily_with_night_gaps(seed: int, days: int) -> list[tuple[float, float]]:
    """Ten hours of N(50, 1) every 5 min each day, nothing for the other fourteen."""
    rng = random.Random(seed)
    return [
        (T0 + d * DAY + i * 5 * MIN, 50 + rng.gauss(0, 1)) for d in range(days) for i in range(120)
    ]


def test_a_warm_rule_scores_at_once_after_a_nightly_gap() -> None:
    # Nightly gaps alone raise about as rarely warm as when every morning warms up anew.
    counts = {}
    for warm in (True, False):
        counts[warm] = sum(
            c.raised
            for seed in range(8)
            for c in feed(
                AdaptiveRule("v", keep_warm_after_gap=warm), _daily_with_night_gaps(seed, 6)
            )
        )
    assert counts[True] <= counts[False] + 1
    points = _daily_with_night_gaps(0, 6)
    assert feed(AdaptiveRule("v"), points) == []
    morning = T0 + 6 * DAY
    rng = random.Random(8)
    stepped = [(morning + i * 5 * MIN, 58 + rng.gauss(0, 1)) for i in range(60)]
    changes = feed(AdaptiveRule("v"), points + stepped)
    assert changes
    assert changes[0].raised
    assert changes[0].ts - morning < 30 * MIN  # no three-hour warm-up every morning
    cold = feed(AdaptiveRule("v", keep_warm_after_gap=False), points + stepped)
    assert not cold or cold[0].ts - morning >= 3 * HOUR


def test_a_small_level_change_across_a_gap_is_still_accepted_when_warm() -> None:
    points = _daily_with_night_gaps(9, 4)
    rng = random.Random(10)
    morning = T0 + 4 * DAY
    moved = [(morning + i * 5 * MIN, 52 + rng.gauss(0, 1)) for i in range(3 * 120)]
    assert feed(AdaptiveRule("v"), points + moved) == []  # 2 SDs: the drift score waits


def test_new_state_survives_a_restart_mid_gap_and_mid_variance() -> None:
    points = _daily_with_night_gaps(11, 4)
    rough, _ = _noise_then_rougher(12, 3.0)
    shift = points[-1][0] + 5 * MIN - T0
    points += [(ts + shift, v) for ts, v in rough[-100:]]
    state = assert_restart_is_seamless(points, 4 * 120 - 3)
    assert state["s_v"] is not None
    assert state["s_vl"] is not None
    assert_restart_is_seamless(points, len(points) - 20)


@pytest.mark.parametrize(
    ("name", "value"),
    [("variance_ratio", 1.0), ("variance_tau_s", 0.0), ("rearm_after_s", -1.0)],
)
def test_bad_new_parameters_are_named(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptiveRule("v", **{name: value})  # type: ignore[arg-type]
