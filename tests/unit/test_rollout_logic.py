"""Pure rollout logic: policy validation, lifecycle table, wave planning, verdicts."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from fleet_server.rollouts.lifecycle import (
    TERMINAL,
    IllegalTransitionError,
    RolloutEvent,
    RolloutState,
    transition,
)
from fleet_server.rollouts.planner import (
    Candidate,
    in_maintenance_window,
    plan_waves,
    wave_for_late_joiner,
    wave_sizes,
)
from fleet_server.rollouts.policy import MaintenanceWindow, PolicyError, parse_policy
from fleet_server.rollouts.stats import (
    failure_lower_bound,
    failure_upper_bound,
    mean_shift_worse,
    rate_ratio_worse,
)
from fleet_server.rollouts.verdict import (
    Outcome,
    StratumHealth,
    VerdictKind,
    judge_health,
    judge_wave,
)

# --- policy ------------------------------------------------------------------------


def test_default_policy_is_valid_and_safe() -> None:
    policy = parse_policy(None)
    assert policy.on_halt.action == "pause"
    assert policy.min_sample >= 30
    assert any(c.pass_gate for c in policy.failure_criteria)
    assert policy.bake_s > 0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"waves": [{"percent": 5, "count": 3}]}, "waves[0]"),
        ({"waves": [{"percent": 60}, {"percent": 50}]}, "waves"),
        ({"waves": [{"percent": 5}], "exponential": {"first": 5}}, "waves"),
        ({"min_sample": 0}, "min_sample"),
        ({"on_halt": {"action": "rollback"}}, "on_halt.rollback_to"),
        ({"on_halt": {"action": "pause", "rollback_to": "1.0.0"}}, "on_halt.rollback_to"),
        ({"stratify_by": ["colour"]}, "stratify_by"),
        ({"maintenance_window": {"start": "25:00", "end": "03:00"}}, "maintenance_window.start"),
        ({"maintenance_window": {"days": ["someday"]}}, "maintenance_window.days"),
        ({"timeouts": {"commit_s": "soon"}}, "timeouts.commit_s"),
        ({"failure_criteria": [{"failure_class": "boot", "max_rate": 0.1}]}, "failure_criteria"),
        ({"wavez": []}, "wavez"),
    ],
)
def test_bad_policies_are_rejected_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data)
    assert info.value.field == field


# --- lifecycle -----------------------------------------------------------------------


def test_lifecycle_happy_path_and_halt_rollback() -> None:
    state = transition(RolloutState.DRAFT, RolloutEvent.SCHEDULE)
    state = transition(state, "start")
    assert transition(state, "complete") is RolloutState.COMPLETED
    halted = transition(state, "halt")
    assert transition(halted, "rollback") is RolloutState.ROLLED_BACK
    assert transition(halted, "resume") is RolloutState.RUNNING


@pytest.mark.parametrize(
    ("state", "event"),
    [
        ("draft", "pause"),
        ("completed", "cancel"),
        ("cancelled", "start"),
        ("running", "start"),
        ("draft", "rollback"),
        ("rolled_back", "resume"),
    ],
)
def test_illegal_transitions_are_rejected_with_what_is_allowed(state: str, event: str) -> None:
    with pytest.raises(IllegalTransitionError, match=f"cannot {event}"):
        transition(state, event)


def test_terminal_states_accept_nothing_but_a_rollback_after_completion() -> None:
    for state in TERMINAL:
        for event in RolloutEvent:
            if (state, event) == (RolloutState.COMPLETED, RolloutEvent.ROLLBACK):
                assert transition(state, event) is RolloutState.ROLLED_BACK
                continue
            with pytest.raises(IllegalTransitionError):
                transition(state, event)


# --- planning ------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 7, 29, 30, 31, 100, 1000, 10_000])
def test_wave_sizes_cover_the_target_and_canary_meets_min_sample(total: int) -> None:
    policy = parse_policy(None)
    sizes = wave_sizes(total, policy)
    assert sum(sizes) == total
    assert all(size > 0 for size in sizes)
    assert sizes[0] == min(total, max(policy.min_sample, sizes[0]))
    assert sizes[0] >= min(total, policy.min_sample)


def test_explicit_waves_get_a_final_wave_with_the_rest() -> None:
    policy = parse_policy({"waves": [{"count": 40}, {"percent": 10}]})
    assert wave_sizes(1000, policy) == [40, 100, 860]


def _fleet(n: int, seed: int = 1) -> list[Candidate]:
    rng = random.Random(seed)
    revisions = ["rev-a"] * 10 + ["rev-b"] * 5 + ["rev-c"]  # rev-c is rare
    return [
        Candidate(
            f"dev-{i:05d}",
            {"hardware_revision": rng.choice(revisions), "batch": f"lot-{rng.randrange(12)}"},
        )
        for i in range(n)
    ]


def test_plan_puts_every_device_in_exactly_one_wave_deterministically() -> None:
    fleet = _fleet(1000)
    policy = parse_policy(None)
    plan = plan_waves(fleet, policy, seed="rollout-1")
    flat = [d for wave in plan for d in wave]
    assert sorted(flat) == sorted(c.device_id for c in fleet)
    assert plan == plan_waves(list(reversed(fleet)), policy, seed="rollout-1")
    assert plan != plan_waves(fleet, policy, seed="rollout-2")


def test_first_wave_canaries_every_revision_and_batch() -> None:
    fleet = _fleet(1000)
    policy = parse_policy(None)
    canary = set(plan_waves(fleet, policy, seed="r")[0])
    for field in ("hardware_revision", "batch"):
        values = {c.strata[field] for c in fleet}
        for value in values:
            present = sum(1 for c in fleet if c.device_id in canary and c.strata[field] == value)
            available = sum(1 for c in fleet if c.strata[field] == value)
            assert present >= min(policy.min_per_stratum, available), (field, value)


def test_late_joiners_enter_the_next_wave_never_bypassing() -> None:
    assert wave_for_late_joiner([True, False, False]) == 1
    assert wave_for_late_joiner([True, True, True]) == 2
    assert wave_for_late_joiner([False]) == 0


def test_maintenance_window_in_device_time_zone_wrapping_midnight() -> None:
    window = MaintenanceWindow(start="22:00", end="04:00", days=["sat"])
    # 2026-11-21 is a Saturday. 23:30 in Berlin (UTC+1) is 22:30 UTC.
    assert in_maintenance_window(
        window, datetime(2026, 11, 21, 22, 30, tzinfo=UTC), "Europe/Berlin"
    )
    # 02:00 Sunday in Berlin belongs to Saturday's window.
    assert in_maintenance_window(window, datetime(2026, 11, 22, 1, 0, tzinfo=UTC), "Europe/Berlin")
    # Same instant in New York is 20:00 Saturday: outside.
    assert not in_maintenance_window(
        window, datetime(2026, 11, 22, 1, 0, tzinfo=UTC), "America/New_York"
    )
    # 23:00 Friday in Berlin: inside the hours but the window opened on a Friday.
    assert not in_maintenance_window(
        window, datetime(2026, 11, 20, 22, 0, tzinfo=UTC), "Europe/Berlin"
    )
    assert in_maintenance_window(None, datetime(2026, 1, 1, tzinfo=UTC), "UTC")


# --- statistics ---------------------------------------------------------------------


def test_exact_binomial_bounds_match_closed_forms() -> None:
    # With zero failures the one-sided upper bound is 1 - alpha^(1/n) (the "rule of three").
    assert failure_upper_bound(0, 30, 0.95) == pytest.approx(1 - 0.05 ** (1 / 30))
    # With all failed the lower bound is alpha^(1/n).
    assert failure_lower_bound(10, 10, 0.95) == pytest.approx(0.05 ** (1 / 10))
    assert failure_upper_bound(0, 0, 0.95) == 1.0
    assert failure_lower_bound(0, 50, 0.95) == 0.0
    with pytest.raises(ValueError, match="failures"):
        failure_upper_bound(5, 3, 0.95)


def test_rate_ratio_detects_a_real_regression_but_not_noise() -> None:
    worse = rate_ratio_worse(30, 100.0, 10, 100.0, max_ratio=1.5, confidence=0.95)
    assert worse.worse
    same = rate_ratio_worse(12, 100.0, 10, 100.0, max_ratio=1.5, confidence=0.95)
    assert not same.worse
    assert not rate_ratio_worse(5, 10.0, 0, 0.0, max_ratio=2, confidence=0.95).worse


def test_mean_shift_needs_more_than_min_delta() -> None:
    rng = random.Random(3)
    control = [50 + rng.gauss(0, 1) for _ in range(40)]
    hot = [60 + rng.gauss(0, 1) for _ in range(40)]
    warm = [52 + rng.gauss(0, 1) for _ in range(40)]
    assert mean_shift_worse(hot, control, min_delta=5, confidence=0.95).worse
    assert not mean_shift_worse(warm, control, min_delta=5, confidence=0.95).worse


# --- verdicts --------------------------------------------------------------------------


def _outcomes(spec: list[tuple[str, int, str, str | None]]) -> list[Outcome]:
    """(revision, count, status, failure class) -> outcomes in wave 0."""
    result: list[Outcome] = []
    for revision, count, status, failure in spec:
        for _ in range(count):
            result.append(
                Outcome(
                    f"d{len(result)}",
                    0,
                    status,  # type: ignore[arg-type]
                    failure,
                    {"hardware_revision": revision, "batch": "lot-1"},
                )
            )
    return result


def test_release_that_breaks_one_revision_halts_naming_that_stratum() -> None:
    outcomes = _outcomes(
        [
            ("rev-a", 40, "committed", None),
            ("rev-c", 5, "committed", None),
            ("rev-c", 5, "failed", "boot"),
            ("rev-a", 20, "in_progress", None),
        ]
    )
    verdict = judge_wave(outcomes, 0, parse_policy(None))
    assert verdict.kind is VerdictKind.HALT
    assert verdict.stratum == "hardware_revision=rev-c"
    assert "rev-c" in verdict.reason


def test_offline_devices_do_not_dilute_the_failure_rate() -> None:
    outcomes = _outcomes(
        [
            ("rev-a", 8, "failed", "install"),
            ("rev-a", 4, "committed", None),
            ("rev-a", 500, "pending", None),
        ]
    )
    verdict = judge_wave(outcomes, 0, parse_policy(None))
    assert verdict.kind is VerdictKind.HALT
    assert verdict.stratum == "hardware_revision=rev-a", "the most specific group is named"


def test_good_wave_with_background_noise_passes() -> None:
    outcomes = _outcomes([("rev-a", 59, "committed", None), ("rev-b", 1, "failed", "download")])
    assert judge_wave(outcomes, 0, parse_policy(None)).kind is VerdictKind.PASS


def test_small_complete_wave_is_extended_not_passed_by_luck() -> None:
    outcomes = _outcomes([("rev-a", 12, "committed", None)])
    verdict = judge_wave(outcomes, 0, parse_policy(None))
    assert verdict.kind is VerdictKind.EXTEND


def test_wave_waits_while_devices_are_updating() -> None:
    outcomes = _outcomes([("rev-a", 40, "committed", None), ("rev-a", 1, "in_progress", None)])
    assert judge_wave(outcomes, 0, parse_policy(None)).kind is VerdictKind.WAIT


def test_any_security_failure_halts() -> None:
    outcomes = _outcomes([("rev-a", 200, "committed", None), ("rev-b", 1, "failed", "security")])
    verdict = judge_wave(outcomes, 0, parse_policy(None))
    assert verdict.kind is VerdictKind.HALT
    assert verdict.failure_class == "security"


def test_health_gate_halts_on_fault_regression() -> None:
    policy = parse_policy(None)
    bad = StratumHealth(
        "hardware_revision=rev-a",
        updated_faults=40,
        control_faults=5,
        updated_hours=100,
        control_hours=100,
    )
    ok = StratumHealth(
        "hardware_revision=rev-b",
        updated_faults=6,
        control_faults=5,
        updated_hours=100,
        control_hours=100,
    )
    assert judge_health([ok], policy) is None
    verdict = judge_health([ok, bad], policy)
    assert verdict is not None
    assert verdict.stratum == "hardware_revision=rev-a"
    assert "fault_rate" in verdict.reason
