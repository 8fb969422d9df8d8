"""The receding gate: a burst that becomes surprising only once it has fallen well below its
own peak is not raised, while a growing departure, a step and a record raise as before; the
run peak survives a restart, an older snapshot restores without it, and bad parameters or
state are refused."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_rule import MIN, T0, feed

STEP = 5 * MIN
QUIET = 4 * 288
"""Four days of N(50, 1) at 5 min before the burst."""


def burst(shape: list[float], seed: int = 2, after: int = 60) -> list[tuple[float, float]]:
    """Quiet noise, then ``shape`` (in SDs of the noise above 50), then ``after`` samples of
    the same noise."""
    rng = random.Random(seed)
    points = [(T0 + i * STEP, 50 + rng.gauss(0, 1)) for i in range(QUIET)]
    tail = [*shape, *(rng.gauss(0, 1) for _ in range(after))]
    return points + [(T0 + (QUIET + k) * STEP, 50 + z) for k, z in enumerate(tail)]


def raises(points: list[tuple[float, float]], **kwargs: Any) -> list[int]:
    """The raises, as positions after the quiet days (0: the burst's first sample)."""
    index = {ts: i - QUIET for i, (ts, _) in enumerate(points)}
    return [index[c.ts] for c in feed(AdaptiveRule("v", **kwargs), points) if c.raised]


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_burst_that_is_falling_back_when_it_becomes_surprising_is_not_raised(
    seed: int,
) -> None:
    # 25 SDs is not yet surprising on one sample (records off here); 9 and 8 are, but
    # they are below 0.6 × 25: the burst is ending, not a fault developing.
    points = burst([25, 9, 8, 2], seed)
    assert raises(points, record_threshold=None) == []
    assert raises(points, record_threshold=None, recede_ratio=0) == [2]  # off: as before
    assert raises(points, record_threshold=None, recede_ratio=None) == [2]
    assert raises(points, record_threshold=None, recede_ratio=0.3) == [2]  # 9 >= 0.3 × 25
    assert raises(points) == [0]  # with records on, 25 SDs out of the blue is one


@pytest.mark.parametrize("shape", [[9, 25, 12, 8, 2], [9.0] * 60])
def test_a_growing_departure_and_a_step_raise_as_before(shape: list[float]) -> None:
    points = burst(shape, after=0)
    assert raises(points, record_threshold=None) == [2]
    assert raises(points, record_threshold=None, recede_ratio=0) == [2]


def test_a_step_that_overshoots_is_raised_later_by_its_drift() -> None:
    # The documented cost: 25 SDs, then a new level at 12 (below 0.6 × 25). With records
    # off its level scores are taken for a burst falling back; the drift score raises it
    # within an hour. With records on (the default) the 25 raises at once.
    points = burst([25.0] + [12.0] * 60, seed=1, after=0)
    (late,) = raises(points, record_threshold=None)
    assert 2 < late <= 12
    assert raises(points) == [0]


def _judging_rule() -> AdaptiveRule:
    """A rule two days old (its drift score is judged), for the gate's own tests."""
    rule = AdaptiveRule("v")
    rule._start_ts = T0
    return rule


LATER = T0 + 2 * 86400.0


def test_the_run_peak_follows_one_side_and_ends_inside_the_clear_band() -> None:
    rule = _judging_rule()
    rule._track_run(6.0, 1.0)
    rule._track_run(4.0, 1.0)
    assert (rule._run_peak, rule._run_n) == (6.0, 2.0)
    assert rule._receding(3.5, "level", 1.0, LATER)  # 3.5 < 0.6 × 6
    assert not rule._receding(3.7, "level", 1.0, LATER)
    assert not rule._receding(3.5, "level", -1.0, LATER)  # the other side is another run
    assert not rule._receding(3.5, "drift", 1.0, LATER)  # only level scores are judged
    rule._track_run(5.0, -1.0)  # a sample on the other side starts a new run
    assert (rule._run_peak, rule._run_n) == (-5.0, 1.0)
    rule._track_run(2.9, -1.0)  # back inside the clear band: no run
    assert (rule._run_peak, rule._run_n) == (0.0, 0.0)
    rule._track_run(1e30, 1.0)
    assert rule._run_peak == 1e15  # kept up to the score cap, so the snapshot restores


def test_a_pending_raise_lifts_the_gate_only_on_its_own_side() -> None:
    rule = _judging_rule()
    rule._track_run(10.0, 1.0)
    rule._pending_n, rule._pending_peak, rule._pending_side = 1, 8.0, 1.0
    assert not rule._receding(3.5, "level", 1.0, LATER)  # 8 >= 0.6 × 10: still near its peak
    rule._pending_side = 2.0  # a pending variance departure says nothing of this run
    assert rule._receding(3.5, "level", 1.0, LATER)


def test_the_gate_holds_for_two_surprise_windows_of_a_run_at_most() -> None:
    # Bursts end within a few samples; a run that outlasts two surprise windows (10
    # samples each here) is a lasting departure, judged as usual.
    rule = _judging_rule()
    for _ in range(20):
        rule._track_run(10.0, 1.0)
    assert rule._receding(5.0, "level", 1.0, LATER)
    rule._track_run(5.0, 1.0)  # the 21st sample of the run
    assert not rule._receding(5.0, "level", 1.0, LATER)


def test_the_gate_is_off_while_the_drift_score_is_not_judged() -> None:
    # The drift score is what raises a step whose first sample overshot: in the rule's
    # first day and in the warm-up after a long gap it is not judged, and neither is the
    # gate.
    rule = _judging_rule()
    rule._track_run(10.0, 1.0)
    assert not rule._receding(5.0, "level", 1.0, T0 + 3600.0)  # its first day
    assert rule._receding(5.0, "level", 1.0, T0 + rule.drift_warmup_s)  # judged from then on
    rule._gap_ts = LATER  # back from a long gap, warming up again
    assert not rule._receding(5.0, "level", 1.0, LATER + 600.0)
    rule._gap_ts = None
    assert rule._receding(5.0, "level", 1.0, LATER)


def test_an_overshooting_step_right_after_a_long_gap_is_not_delayed() -> None:
    # A bursty signal (1 % of its samples 8 to 30 SDs high), so the 25 is no record.
    rng = random.Random(1)
    points = [
        (T0 + i * STEP, 50 + rng.gauss(0, 1) + (rng.uniform(8, 30) if rng.random() < 0.01 else 0))
        for i in range(QUIET)
    ]
    back = points[-1][0] + 8 * 3600.0  # eight hours off
    level = [25.0] + [12.0] * 60
    points += [(back + k * STEP, 50 + z + rng.gauss(0, 1)) for k, z in enumerate(level)]
    gated = raises(points, record_threshold=None)
    assert gated
    assert gated == raises(points, record_threshold=None, recede_ratio=0)


def _state_after(points: list[tuple[float, float]], n: int) -> dict[str, Any]:
    rule = AdaptiveRule("v", record_threshold=None)
    feed(rule, points[:n])
    state: dict[str, Any] = json.loads(json.dumps(rule.snapshot()))
    return state


def test_a_restart_inside_a_burst_keeps_its_run_peak() -> None:
    points = burst([25, 9, 8, 2])
    state = _state_after(points, QUIET + 1)  # after the 25-SD sample
    assert state["run_peak"] > 20
    resumed = AdaptiveRule("v", record_threshold=None)
    assert resumed.restore(state)
    whole = AdaptiveRule("v", record_threshold=None)
    assert feed(resumed, points[QUIET + 1 :]) == feed(whole, points)
    assert resumed.snapshot() == whole.snapshot()


def test_a_snapshot_from_before_the_gate_restores_with_no_run() -> None:
    points = burst([25, 9, 8, 2])
    state = _state_after(points, QUIET + 1)
    del state["run_peak"], state["run_n"]
    resumed = AdaptiveRule("v", record_threshold=None)
    assert resumed.restore(state)
    assert resumed._run_peak == 0.0
    # Without the run the next samples are judged as a new departure: 9 and 8 raise.
    index = {ts: i - QUIET for i, (ts, _) in enumerate(points)}
    changes = feed(resumed, points[QUIET + 1 :])
    assert [index[c.ts] for c in changes if c.raised] == [2]


@pytest.mark.parametrize(
    "bad",
    [
        {"run_peak": "up"},
        {"run_peak": True},
        {"run_n": -1.0},
        {"run_n": 1.5},
        {"run_n": 0.0},  # a run peak with no sample in its run
        {"run_n": True},
        {"run_n": "3"},
        {"run_peak": None, "run_n": 3.0},  # a run length without a run
    ],
)
def test_a_bad_run_state_is_refused(bad: dict[str, object]) -> None:
    state = _state_after(burst([25, 9, 8, 2]), QUIET + 1)
    rule = AdaptiveRule("v", record_threshold=None)
    assert not rule.restore({**state, **bad})
    assert rule.restore(state)


def test_a_run_peak_beyond_the_score_cap_restores_at_the_cap() -> None:
    state = _state_after(burst([25, 9, 8, 2]), QUIET + 1)
    rule = AdaptiveRule("v", record_threshold=None)
    assert rule.restore({**state, "run_peak": 1e16})
    assert rule._run_peak == 1e15


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), float("inf"), "0.6", True])
def test_bad_recede_ratios_are_named(value: object) -> None:
    with pytest.raises(ValueError, match="recede_ratio"):
        AdaptiveRule("v", recede_ratio=value)  # type: ignore[arg-type]


def test_a_snapshot_with_the_run_peak_but_not_its_length_restores_as_a_run_just_begun() -> None:
    # Written between the gate and its run length.
    state = _state_after(burst([25, 9, 8, 2]), QUIET + 1)
    peak = state["run_peak"]
    del state["run_n"]
    rule = AdaptiveRule("v", record_threshold=None)
    assert rule.restore(state)
    assert (rule._run_peak, rule._run_n) == (peak, 1.0)
