"""The adaptive rule's recurrence memory: a departure the signal shows every day at the same
time is not a fault; one at a new time of day, or far larger, still is."""

from __future__ import annotations

import json
import random

import pytest

from agent.core.adaptive import AdaptiveRule
from agent.core.adaptive_recurrence import RECURRENCE_BINS
from tests.unit.test_adaptive_rule import (
    DAY,
    HOUR,
    MIN,
    T0,
    assert_restart_is_seamless,
    feed,
    noisy,
)


def _daily_blip(
    seed: int, days: int, *, height: float = 12.0, at_h: float = 10.0
) -> list[tuple[float, float]]:
    """N(50, 1) every 5 min with a 15-minute blip of ``height`` every day at ``at_h``
    o'clock: too short for an hourly daily profile to follow."""
    rng = random.Random(seed)
    points = []
    for i in range(days * 288):
        ts = T0 + i * 5 * MIN
        hour = ((ts % DAY) / HOUR - at_h) % 24
        points.append((ts, 50 + rng.gauss(0, 1) + (height if hour < 0.25 else 0.0)))
    return points


def _days_raised(changes: list, start: float = T0) -> set[int]:
    return {int((c.ts - start) // DAY) for c in changes if c.raised}


@pytest.mark.parametrize("seed", range(1, 7))
def test_a_daily_blip_stops_raising_once_it_has_recurred(seed: int) -> None:
    points = _daily_blip(seed, 8)
    # Raised on its first days at most; never once it has been seen on two days running.
    assert not [d for d in _days_raised(feed(AdaptiveRule("v"), points)) if d >= 2]


def test_without_the_memory_the_daily_blip_raises_again_on_later_days() -> None:
    later = 0
    for seed in range(1, 7):
        points = _daily_blip(seed, 8)
        days = _days_raised(feed(AdaptiveRule("v", recurrence_ratio=None), points))
        later += len([d for d in days if d >= 2])
    assert later >= 3


def _seventh_day(seed: int, extra: float, at_h: float, hours: float) -> list[tuple[float, float]]:
    """Six days of the daily blip, then a seventh with ``extra`` added from ``at_h``
    o'clock for ``hours``."""
    points = _daily_blip(seed, 6)
    start = points[-1][0] + 5 * MIN
    for ts, v in _daily_blip(seed + 20, 1):
        hour = ((ts % DAY) / HOUR - at_h) % 24
        points.append((start + ts - T0, v + (extra if hour < hours else 0.0)))
    return points


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_departure_at_a_new_time_of_day_or_far_larger_is_still_raised(seed: int) -> None:
    start = T0 + 6 * DAY
    # An hour 8 SDs up at 16:00, a time of day that never departed: raised within the hour.
    points = _seventh_day(seed, 8.0, 16.0, 1.0)
    raised = [c for c in feed(AdaptiveRule("v"), points) if c.raised and c.ts >= start]
    assert raised
    assert 16 <= (raised[0].ts % DAY) / HOUR < 17
    # The usual blip, but four times as tall, at the usual time: a record, never excused.
    points = _seventh_day(seed, 36.0, 10.0, 0.25)
    raised = [c for c in feed(AdaptiveRule("v"), points) if c.raised and c.ts >= start]
    assert raised
    assert 10 <= (raised[0].ts % DAY) / HOUR < 10.5


@pytest.mark.parametrize("seed", [5, 6])
def test_the_memory_keeps_stationary_noise_quiet(seed: int) -> None:
    points = noisy(random.Random(seed), 10 * 288)
    assert feed(AdaptiveRule("v"), points) == []


def test_recurrence_memory_survives_a_restart() -> None:
    points = _daily_blip(7, 5)
    state = assert_restart_is_seamless(points, 3 * 288 + 121)  # just after the third blip
    assert len(state["rec_day1"]) == RECURRENCE_BINS
    assert max(state["rec_day1"]) > 5  # yesterday's blip is remembered
    assert_restart_is_seamless(points, len(points) - 7)


def test_a_snapshot_without_the_memory_restores_and_bad_lists_are_rejected() -> None:
    points = _daily_blip(8, 3)
    rule = AdaptiveRule("v")
    feed(rule, points)
    state = json.loads(json.dumps(rule.snapshot()))
    old = {k: v for k, v in state.items() if not k.startswith("rec_")}
    resumed = AdaptiveRule("v")
    resumed.restore(old)  # written before the memory existed: the rest is kept
    assert resumed.snapshot()["m_f"] == state["m_f"]
    assert resumed.snapshot()["rec_day1"] == [0.0] * RECURRENCE_BINS
    rule.restore(old)  # also into a rule that had learned a memory of its own
    assert rule.snapshot()["rec_day1"] == [0.0] * RECURRENCE_BINS
    for bad in ([1.0] * 3, [-1.0] * RECURRENCE_BINS, "x"):
        fresh = AdaptiveRule("v")
        fresh.restore({**state, "rec_day2": bad})
        assert fresh.snapshot()["m_f"] is None  # ignored as a whole


@pytest.mark.parametrize("value", [0.5, -1.0, float("nan")])
def test_a_bad_recurrence_ratio_is_named(value: float) -> None:
    with pytest.raises(ValueError, match="recurrence_ratio"):
        AdaptiveRule("v", recurrence_ratio=value)
