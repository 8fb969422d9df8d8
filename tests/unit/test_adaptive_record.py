"""The adaptive rule's record stage: a departure far beyond anything the signal has shown
raises at once (no debounce), a signal whose spikes are routine does not, and the state
survives a restart."""

from __future__ import annotations

import random

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import MIN, assert_restart_is_seamless, feed, noisy


def quiet_then_spike(rng: random.Random, spike: float) -> list[tuple[float, float]]:
    """Three quiet days of N(50, 1) every 5 minutes, one lone sample ``spike`` SDs off the
    level, then two quiet hours."""
    before = noisy(rng, 3 * 288)
    t = before[-1][0] + 5 * MIN
    after = [(t + i * 5 * MIN, 50 + rng.gauss(0, 1)) for i in range(1, 25)]
    return [*before, (t, 50 + spike), *after]


@pytest.mark.parametrize("spike", [40.0, -40.0])
def test_a_lone_record_spike_raises_at_once_and_clears(spike: float) -> None:
    points = quiet_then_spike(random.Random(3), spike)
    spike_ts = points[3 * 288][0]
    changes = feed(AdaptiveRule("v"), points)
    assert [c.raised for c in changes] == [True, False]
    assert changes[0].ts == spike_ts  # the spike sample itself: no debounce
    assert ("above" if spike > 0 else "below") in changes[0].message
    assert changes[1].ts - spike_ts >= 3600.0  # cleared after the clear hold


def test_record_stage_off_keeps_a_lone_spike_quiet() -> None:
    points = quiet_then_spike(random.Random(3), 40.0)
    assert feed(AdaptiveRule("v", record_threshold=0), points) == []
    assert feed(AdaptiveRule("v", record_threshold=None), points) == []


def test_a_spike_below_the_record_threshold_or_ratio_is_not_a_record() -> None:
    points = quiet_then_spike(random.Random(3), 8.0)  # 8 SDs < record_threshold 10
    assert feed(AdaptiveRule("v"), points) == []
    # Past spikes of 30 SDs make a 40-SD one (not record_ratio times larger) routine.
    rng = random.Random(5)
    routine = [(ts, v + (30 if i % 288 == 100 else 0)) for i, (ts, v) in enumerate(noisy(rng, 864))]
    last = routine[-1][0]
    spike = [(last + 5 * MIN, 90.0)]
    spike += [(last + i * 5 * MIN, 50.0 + rng.gauss(0, 1)) for i in (2, 3)]
    assert feed(AdaptiveRule("v"), routine + spike) == []


def test_no_record_before_the_signal_has_been_watched_for_a_day() -> None:
    rng = random.Random(9)
    early = noisy(rng, 100)  # about eight hours
    early[60] = (early[60][0], 90.0)
    assert feed(AdaptiveRule("v"), early) == []


def test_record_state_survives_a_restart() -> None:
    points = quiet_then_spike(random.Random(13), 40.0)
    state = assert_restart_is_seamless(points, 2 * 288)
    assert state["peak"] is not None
    # A snapshot written before the record stage existed still loads; the peak starts anew.
    legacy = AdaptiveRule("v")
    legacy.restore({k: v for k, v in state.items() if not k.startswith("peak")})
    assert legacy.snapshot()["n"] == state["n"]
    assert legacy.snapshot()["peak"] is None
    # A corrupt peak is refused whole.
    refused = AdaptiveRule("v")
    refused.restore({**state, "peak": -1.0})
    assert refused.snapshot()["n"] == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"record_threshold": -1.0},
        {"record_threshold": float("nan")},
        {"record_ratio": 0.5},
        {"record_tau_s": 0.0},
        {"record_tau_s": float("inf")},
    ],
)
def test_bad_record_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="record_"):
        AdaptiveRule("v", **kwargs)  # type: ignore[arg-type]
