"""The rise gate of the follow bar: a drift score follows a strong level departure (counts
from the follow bar instead of the drift minimum) only when it has risen, since the sample
before the pending raise opened, by ``surprise_follow_rise`` × the most one sample can
move it; the state survives a restart, older snapshots restore and bad values are refused."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from agent.core.adaptive import AdaptiveRule
from tests.unit.test_adaptive_follow import QUIET, episode
from tests.unit.test_adaptive_rule import T0, assert_restart_is_seamless, feed


def pending_rule(**kwargs: Any) -> AdaptiveRule:
    """A rule past its warm-ups (four quiet days), then given a pending raise above the
    fast level whose strong score is 6.6 and whose drift score was 2.0 before it opened."""
    rule = AdaptiveRule("v", **kwargs)
    feed(rule, episode(7.0, 3.1)[:QUIET])
    rule._pending_n, rule._pending_peak, rule._pending_side = 1, 6.6, 1.0
    rule._pending_drift = 2.0
    return rule


def most_drag(rule: AdaptiveRule) -> float:
    """The most one sample can move the drift score: the fast level's learning rate ×
    ``huber_k`` noise SDs, in SDs of the drift score."""
    assert rule._dt_typ is not None
    sd_f = rule._sd_fast()
    rate = -math.expm1(-rule._dt_typ / rule._tau(rule.fast_tau_s))
    return rate * rule.huber_k * sd_f / rule._sd_drift(sd_f, 0.0)


BAR = max(2.5, 0.4 * 6.6)


def test_a_drift_follower_that_did_not_rise_counts_from_the_drift_minimum() -> None:
    rule = pending_rule()
    most = most_drag(rule)
    assert 0 < most < 2
    rule._z_drift_signed = 2.0 + 0.5 * most  # rose by half of what one sample can move it
    assert rule._least_score("drift", 1.0) == 4.0
    rule._z_drift_signed = 1.9  # fell: a drift that was already there
    assert rule._least_score("drift", 1.0) == 4.0
    assert rule._least_score("level", 1.0) == pytest.approx(BAR)  # level followers: ungated


def test_a_drift_follower_that_rose_counts_from_the_follow_bar() -> None:
    rule = pending_rule()
    rule._z_drift_signed = 2.0 + 0.8 * most_drag(rule)
    assert rule._least_score("drift", 1.0) == pytest.approx(BAR)
    rule._z_drift_signed = 2.0 + 0.5 * most_drag(rule)
    rule.surprise_follow_rise = 0.4  # a lower gate lets the same rise through
    assert rule._least_score("drift", 1.0) == pytest.approx(BAR)


def test_the_rise_is_measured_on_the_pending_side() -> None:
    rule = pending_rule()
    rule._pending_side = -1.0  # a departure below: its drift score is the negative one
    rule._pending_drift = 2.0  # 2 SDs below the long-term level before it opened
    rule._z_drift_signed = -(2.0 + 0.8 * most_drag(rule))
    assert rule._least_score("drift", -1.0) == pytest.approx(BAR)
    rule._z_drift_signed = -(2.0 + 0.5 * most_drag(rule))
    assert rule._least_score("drift", -1.0) == 4.0


@pytest.mark.parametrize("off", [0, 0.0, None])
def test_a_rise_gate_of_zero_lets_every_drift_follower_through(off: float | None) -> None:
    rule = pending_rule(surprise_follow_rise=off)
    assert rule.surprise_follow_rise is None
    rule._z_drift_signed = 1.9
    assert rule._least_score("drift", 1.0) == pytest.approx(BAR)


def test_the_pending_raise_keeps_the_drift_score_of_the_sample_before_it() -> None:
    points = episode(7.0, 3.1)
    rule = AdaptiveRule("v")
    feed(rule, points[: QUIET + 4])  # up to the sample before the strong one
    before = rule._last_drift
    assert before != 0.0  # the drift score is judged after a day
    feed(rule, points[QUIET + 4 : QUIET + 5])  # the strong sample opens the raise
    assert rule._pending_n == 1
    assert rule._pending_drift == before  # the pending side is above: the sign is kept
    feed(rule, points[QUIET + 5 :])
    assert rule._pending_n == 0
    assert rule._pending_drift == 0.0


def test_a_restart_keeps_the_rise_gate_state() -> None:
    points = episode(7.0, 3.1)
    state = assert_restart_is_seamless(points, QUIET + 5)
    assert state["pending_n"] == 1
    assert state["pending_drift"] != 0.0
    assert state["last_drift"] != 0.0


def test_a_snapshot_from_before_the_rise_gate_restores() -> None:
    points = episode(7.0, 3.1)
    first = AdaptiveRule("v")
    feed(first, points[: QUIET + 5])
    state = json.loads(json.dumps(first.snapshot()))
    del state["pending_drift"], state["last_drift"]
    resumed = AdaptiveRule("v")
    assert resumed.restore(state)
    assert resumed._pending_n == 1
    assert (resumed._pending_drift, resumed._last_drift) == (0.0, 0.0)  # counted from 0
    feed(resumed, points[QUIET + 5 :])
    assert resumed._pending_n == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"pending_drift": "high"},
        {"pending_drift": True},
        {"pending_drift": 1e19},
        {"last_drift": -1e19},
        {"last_drift": float("nan")},
        {"last_drift": [1.0]},
    ],
)
def test_a_bad_rise_gate_state_is_refused(bad: dict[str, object]) -> None:
    donor = AdaptiveRule("v")
    feed(donor, episode(7.0, 3.1)[: QUIET + 5])
    rule = AdaptiveRule("v")
    assert not rule.restore({**donor.snapshot(), **bad})
    assert rule.restore(donor.snapshot())


def test_a_large_drift_state_is_kept_up_to_the_score_cap() -> None:
    donor = AdaptiveRule("v")
    feed(donor, episode(7.0, 3.1)[: QUIET + 5])
    rule = AdaptiveRule("v")
    assert rule.restore({**donor.snapshot(), "pending_drift": 5e17, "last_drift": -5e17})
    assert (rule._pending_drift, rule._last_drift) == (1e15, -1e15)


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.7", True])
def test_a_bad_rise_gate_parameter_is_named(value: object) -> None:
    with pytest.raises(ValueError, match="surprise_follow_rise"):
        AdaptiveRule("v", surprise_follow_rise=value)  # type: ignore[arg-type]


def _ramp_then_spike(sign: float, before_spike: float) -> list[tuple[float, float]]:
    """Four days of N(50, 1) at 5 min whose last 6 h ramp 0.5 SD away (on ``sign``'s
    side), four alternating 2.8-SD samples, ``before_spike`` SDs, a 7-SD spike, then
    three ordinary samples: the drift score (about 2.7) can follow the spike."""
    rng = random.Random(0)
    n = 4 * 288
    points = [
        (T0 + i * 300.0, 50 + sign * (rng.gauss(0, 1) + 0.5 * max(0, i - (n - 72)) / 72))
        for i in range(n)
    ]
    tail = [2.8, -2.8, 2.8, -2.8, before_spike, 7.0, 0.2, 0.2, 0.2]
    return points + [(T0 + (n + k) * 300.0, 50 + sign * (0.5 + z)) for k, z in enumerate(tail)]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_gate_works_through_update_on_either_side(sign: float) -> None:
    # The sample before the spike was at the ramp's level: the drift score that follows
    # the spike was wandering already, not dragged: held back (raised with the gate off).
    # One 2.5 SDs out on the spike's side dragged it: raised either way. Mirrored below.
    def raised(points: list[tuple[float, float]], **kwargs: Any) -> list[float]:
        return [c.ts for c in feed(AdaptiveRule("v", **kwargs), points) if c.raised]

    wandering = _ramp_then_spike(sign, 0.0)
    assert raised(wandering) == []
    assert raised(wandering, surprise_follow_rise=0) == [wandering[-3][0]]
    dragged = _ramp_then_spike(sign, 2.5)
    assert raised(dragged) == [dragged[-3][0]]
