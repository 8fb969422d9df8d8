"""The record stage beside the recurrence memory, and the noise scale's memory on sparse
signals: a nightly spike does not hide a first spike at a new hour, a daily spike that
grows a little is still not a record, and an hourly signal's noise scale is averaged over
enough samples to be steady."""

from __future__ import annotations

import random
import statistics

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import DAY, HOUR, MIN, T0, feed, noisy


def _nightly_spike(
    seed: int, days: int, *, height: float = 40.0, last: float | None = None
) -> list[tuple[float, float]]:
    """N(50, 1) every 5 min with one sample ``height`` up at 03:00 every day (``last``
    instead on the last day)."""
    rng = random.Random(seed)
    points = []
    for i in range(days * 288):
        ts = T0 + i * 5 * MIN
        spike = 0.0
        if round((ts % DAY) / (5 * MIN)) == round(3 * HOUR / (5 * MIN)):
            spike = last if last is not None and ts >= T0 + (days - 1) * DAY else height
        points.append((ts, 50 + rng.gauss(0, 1) + spike))
    return points


def _raised_after(changes: list, start: float) -> list:
    return [c for c in changes if c.raised and c.ts >= start]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_first_spike_at_a_new_hour_is_a_record_beside_a_nightly_spike(seed: int) -> None:
    days = 12
    points = _nightly_spike(seed, days)
    # A lone sample 75 up at 22:00, 19 h after a nightly spike: twice as tall as it, at an
    # hour that never departed. Before, the nightly spikes (excused by the recurrence
    # memory) had taught the record tail to ignore anything below 3 × 40.
    nights = [ts for ts, v in points if v > 70]
    at = nights[-2] + 19 * HOUR
    points = [(ts, v + (75.0 if ts == at else 0.0)) for ts, v in points]
    raised = _raised_after(feed(AdaptiveRule("v"), points), T0 + 2 * DAY)
    assert [c.ts for c in raised] == [at]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_nightly_spike_that_grows_is_not_a_record(seed: int) -> None:
    # Ten nights at 40, then one at 65: not excused (more than 1.2 × the previous nights)
    # and more than 2.5 × the peak decayed over a day, but less than 2.5 × the same hour's
    # peak of the previous nights, so not a record (and a lone sample is never debounced).
    points = _nightly_spike(seed, 11, last=65.0)
    assert not _raised_after(feed(AdaptiveRule("v"), points), T0 + 3 * DAY)


def _learned_sd(rule: AdaptiveRule, points: list[tuple[float, float]], after: float) -> list[float]:
    sds = []
    for ts, v in points:
        feed(rule, [(ts, v)])
        if ts >= after:
            sds.append(rule._sd_fast())
    return sds


def test_an_hourly_signal_learns_a_steady_noise_scale() -> None:
    # Hourly N(50, 1) for 60 days: the noise scale averages at least 100 samples, not a
    # day's 24, so it wanders about half as much (a low swing of a 24-sample estimate
    # makes ordinary samples score as departures).
    points = noisy(random.Random(7), 60 * 24, step=HOUR)
    after = T0 + 10 * DAY
    steady = _learned_sd(AdaptiveRule("v"), points, after)
    short = _learned_sd(AdaptiveRule("v", scale_min_samples=0), points, after)
    assert statistics.pstdev(steady) < 0.6 * statistics.pstdev(short)
    assert 0.85 < statistics.mean(steady) < 1.15


def test_the_scale_memory_leaves_signals_sampled_every_5_min_alone() -> None:
    points = noisy(random.Random(3), 10 * 288)
    step = T0 + 6 * DAY  # an hour 8 SDs up on day 6, so there is a raise to compare
    points = [(ts, v + (8.0 if step <= ts < step + HOUR else 0.0)) for ts, v in points]
    default, off = AdaptiveRule("v"), AdaptiveRule("v", scale_min_samples=0)
    assert feed(default, points) == feed(off, points)
    assert default.snapshot() == off.snapshot()


def test_scale_min_samples_is_validated() -> None:
    with pytest.raises(ValueError, match="scale_min_samples"):
        AdaptiveRule("v", scale_min_samples=-1)


@pytest.mark.parametrize("step", [5 * MIN, HOUR])
@pytest.mark.parametrize("seed", [1, 2])
def test_a_nightly_spike_is_not_a_record_after_a_weekend_off(seed: int, step: float) -> None:
    # The nightly spike was excused for weeks, so the record tail never learned it; a
    # device off for two days (three nights between spikes: the recurrence memory forgets)
    # must not raise its first nightly spike back as a record.
    rng = random.Random(seed)
    points = []
    for i in range(int(30 * DAY / step)):
        ts = T0 + i * step
        if 20 * DAY <= ts - T0 < 22 * DAY:
            continue  # the device is off
        spike = 40.0 if round((ts % DAY) / step) == round(3 * HOUR / step) else 0.0
        points.append((ts, 50 + rng.gauss(0, 1) + spike))
    assert not _raised_after(feed(AdaptiveRule("v"), points), T0 + 19 * DAY)
