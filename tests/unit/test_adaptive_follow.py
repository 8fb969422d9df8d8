"""The follow bar: a clear surprising departure whose next sample is still out on the same
side raises, even when that sample is below ``surprise_min_score``; a sample on the other
side, or one that fell back to a small share of a tall spike, does not; the pending state
survives a restart and bad parameters or state are refused."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import MIN, T0, assert_restart_is_seamless, feed

STEP = 5 * MIN
QUIET = 4 * 288
"""Four days of N(50, 1) at 5 min before the episode."""


def episode(strong: float, follow: float, seed: int = 1) -> list[tuple[float, float]]:
    """Quiet noise, then a rough spell that makes departures surprising (±2.8 SDs, none
    raising: 3 SDs is the minimum), a ``strong`` sample and a ``follow`` sample (in SDs of
    the noise above 50, negative below)."""
    rng = random.Random(seed)
    points = [(T0 + i * STEP, 50 + rng.gauss(0, 1)) for i in range(QUIET)]
    tail = [2.8, -2.8, 2.8, -2.8, strong, follow]
    return points + [(T0 + (QUIET + k) * STEP, 50 + z) for k, z in enumerate(tail)]


def raises(points: list[tuple[float, float]], **kwargs: Any) -> list[int]:
    """The indices of the points the rule raised on."""
    index = {ts: i for i, (ts, _) in enumerate(points)}
    return [index[c.ts] for c in feed(AdaptiveRule("v", **kwargs), points) if c.raised]


def test_a_strong_departure_followed_on_the_same_side_raises_on_the_follower() -> None:
    # +7 SDs (a score of 6.6 at surprise 1.9), then +3.1 (2.8: below the minimum of 3, above
    # the follow bar max(2.5, 0.4 × 6.6)): one departure over two samples.
    points = episode(7.0, 3.1)
    assert raises(points) == [len(points) - 1]
    assert raises(points, surprise_follow_score=0) == []  # off: as before, a lone glitch
    assert raises(points, surprise_follow_score=None) == []
    assert raises(points, surprise_strong_score=8.0) == []  # 6.6 is not strong enough
    change = next(c for c in feed(AdaptiveRule("v"), points) if c.raised)
    # The reported bound is the follow bar the sample crossed, not the usual 3 SDs.
    assert change.value >= change.threshold
    assert "2.8 robust SDs above" in change.message


def test_a_follower_on_the_other_side_is_judged_as_usual() -> None:
    # Noise swings both ways: -2.8 after +7 scores 2.7 below, which is no continuation.
    assert raises(episode(7.0, -2.8)) == []


def test_a_follower_that_fell_back_from_a_tall_spike_is_judged_as_usual() -> None:
    # +9 SDs (8.5) then +3.1 (2.8 < 0.4 × 8.5): a spike and an ordinary sample, not raised;
    # a follower at the usual minimum raises as before.
    assert raises(episode(9.0, 3.1)) == []
    assert raises(episode(9.0, 3.6)) == [QUIET + 5]
    assert raises(episode(9.0, 3.1), surprise_follow_ratio=0.0) == [QUIET + 5]


def test_a_restart_between_the_strong_sample_and_its_follower_keeps_the_pending_raise() -> None:
    points = episode(7.0, 3.1)
    state = assert_restart_is_seamless(points, len(points) - 1)
    assert state["pending_n"] == 1
    assert state["pending_peak"] > 6
    assert state["pending_side"] == 1.0


def test_a_snapshot_from_before_the_follow_bar_restores_with_nothing_pending() -> None:
    points = episode(7.0, 3.1)
    first = AdaptiveRule("v")
    feed(first, points[: QUIET - 50])
    state = json.loads(json.dumps(first.snapshot()))
    assert state["pending_peak"] == 0.0
    assert state["pending_side"] == 0.0
    del state["pending_peak"], state["pending_side"]
    resumed = AdaptiveRule("v")
    assert resumed.restore(state)
    assert feed(resumed, points[QUIET - 50 :]) == feed(AdaptiveRule("v"), points)


@pytest.mark.parametrize(
    "bad",
    [{"pending_peak": -1.0}, {"pending_side": 0.5}, {"pending_side": "up"}, {"pending_peak": 1e19}],
)
def test_a_bad_pending_state_is_refused(bad: dict[str, object]) -> None:
    points = episode(7.0, 3.1)
    donor = AdaptiveRule("v")
    feed(donor, points[:-1])
    rule = AdaptiveRule("v")
    assert not rule.restore({**donor.snapshot(), **bad})
    assert rule.restore(donor.snapshot())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("surprise_follow_score", -1.0),
        ("surprise_follow_score", float("nan")),
        ("surprise_strong_score", -0.5),
        ("surprise_strong_score", float("inf")),
        ("surprise_follow_ratio", 1.5),
        ("surprise_follow_ratio", -0.1),
        ("surprise_follow_ratio", float("nan")),
        ("surprise_follow_ratio", "0.4"),  # a string from a configuration file
        ("surprise_follow_score", True),
        ("surprise_strong_score", "4"),
        ("raise_threshold", "4"),  # every numeric parameter is checked the same way
    ],
)
def test_bad_follow_parameters_are_named(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        AdaptiveRule("v", **{name: value})  # type: ignore[arg-type]


def test_a_long_gap_forgets_the_strong_score_of_the_raise_pending_before_it() -> None:
    # The +7 SD sample opens a pending raise; then nothing for 400 minutes (a long gap:
    # the warm model keeps scoring, the pending raise is dropped). A new pending raise
    # after it (+4) is judged on its own scores: the +3 sample after it does not raise.
    points = episode(7.0, 3.1)[:-1]
    after = points[-1][0] + 400 * MIN
    points += [(after, 54.0), (after + STEP, 53.0)]
    assert raises(points) == []


def test_a_drift_score_can_follow_a_strong_level_departure() -> None:
    # The side of a level score is the sample's against the fast level; of a drift
    # score, the fast level's against the long-term one. A level departure that drags
    # the fast level along continues as a drift score on the same side, which then
    # counts from the follow bar rather than the drift minimum (4). (The rise gate, off
    # here, also asks the drift score to have risen: tests/unit/test_adaptive_rise.py.)
    rule = AdaptiveRule("v", surprise_follow_rise=0)
    rule._pending_n, rule._pending_peak, rule._pending_side = 1, 6.6, 1.0
    assert rule._least_score("drift", 1.0) == pytest.approx(max(2.5, 0.4 * 6.6))
    assert rule._least_score("drift", -1.0) == 4.0  # the other side: as usual
    assert rule._least_score("variance", 2.0) == 3.0  # a variance score follows no level score
    rule._pending_peak = 4.4  # not strong enough
    assert rule._least_score("drift", 1.0) == 4.0


def test_a_signal_of_tiny_steady_noise_keeps_a_snapshot_that_restores() -> None:
    # Noise of 1e-11 around 1e-9, then a jump to 1e8: a score near 1e19. The state keeps
    # scores up to 1e15, so the snapshot stays within what a restore accepts.
    rng = random.Random(3)
    points = [(T0 + i * STEP, 1e-9 + rng.gauss(0, 1e-11)) for i in range(QUIET)]
    points.append((T0 + QUIET * STEP, 1e8))
    rule = AdaptiveRule("v", record_threshold=None)
    feed(rule, points)
    state = json.loads(json.dumps(rule.snapshot()))
    assert AdaptiveRule("v", record_threshold=None).restore(state)
    assert AdaptiveRule("v").restore(json.loads(json.dumps(_with_record(points).snapshot())))


def _with_record(points: list[tuple[float, float]]) -> AdaptiveRule:
    rule = AdaptiveRule("v")
    feed(rule, points)
    return rule
