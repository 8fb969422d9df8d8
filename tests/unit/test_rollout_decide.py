"""The rollout engine's decisions without a database: hand-built views, one per action,
and property tests over random views (caps, undecided waves, limits, pauses, windows)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_server.rollouts import verdict
from fleet_server.rollouts.actions import (
    Advance,
    Alert,
    Complete,
    Dispatch,
    Exclude,
    Extend,
    Halt,
    Join,
    ReleasePending,
    ResetBake,
    RollBack,
    StartBake,
    Wait,
)
from fleet_server.rollouts.criteria import HALT_CRITERIA, HEALTH_GATES, failure_counts
from fleet_server.rollouts.decide import decide, outcomes_of
from fleet_server.rollouts.evidence import Verdict, VerdictKind
from fleet_server.rollouts.planner import in_maintenance_window
from fleet_server.rollouts.policy import Policy, PolicyError, parse_policy
from fleet_server.rollouts.view import (
    DeviceView,
    Exclusion,
    ExecutionView,
    RollbackAttempt,
    RolloutView,
)

NOON = datetime(2026, 3, 4, 12, 0, tzinfo=UTC).timestamp()
BASE = {
    "min_sample": 30,
    "canary_in_flight": 3,
    "bake_s": 600,
    "stratify_by": ["hardware_revision"],
    "min_per_stratum": 1,
}
POLICY = parse_policy(BASE)


def dev(key: int, *, online: bool = True, rev: str = "a", version: str = "1.0.0") -> DeviceView:
    return DeviceView(
        key=key,
        device_id=f"d-{key:03d}",
        online=online,
        software_version=version,
        strata={"hardware_revision": rev},
    )


def ex(
    key: int,
    wave: int,
    status: str,
    failure: str | None = None,
    *,
    online: bool = True,
    rev: str = "a",
    version: str | None = None,
    finished: float | None = None,
) -> ExecutionView:
    if version is None:
        version = "2.0.0" if status == "committed" else "1.0.0"
    return ExecutionView(
        device=dev(key, online=online, rev=rev, version=version),
        wave=wave,
        status=status,
        failure_class=failure,
        created_at=NOON - 3600,
        finished_at=finished
        if finished is not None
        else (NOON - 60 if status in ("committed", "failed") else None),
        id=f"ex-{key}",
    )


def view(executions: list[ExecutionView], **fields: object) -> RolloutView:
    base = RolloutView(
        id="ro-test",
        state="running",
        policy=POLICY,
        seed="seed",
        current_wave=0,
        waves_total=max((e.wave for e in executions), default=0) + 1,
        wave_started_at=NOON - 7200,
        release_version="2.0.0",
        executions=tuple(executions),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def kinds(actions: list[object]) -> list[type]:
    return [type(a) for a in actions]


def dispatched(actions: list[object]) -> list[int]:
    return [a.device_key for a in actions if isinstance(a, Dispatch)]


# --- one hand-built view per action -----------------------------------------------------


def test_a_fresh_canary_sends_only_canary_in_flight_installs() -> None:
    executions = [ex(k, 0, "pending") for k in range(10)] + [
        ex(k, 1, "pending") for k in range(10, 20)
    ]
    actions = decide(view(executions), POLICY, NOON)
    assert kinds(actions) == [Dispatch] * 3
    assert all(k < 10 for k in dispatched(actions)), "no device of a later wave"
    assert all(a.ttl_s == POLICY.timeouts.accept_s for a in actions if isinstance(a, Dispatch))


def test_the_canary_waits_for_its_first_devices_to_report() -> None:
    executions = [ex(k, 0, "sent") for k in range(3)] + [ex(k, 0, "pending") for k in range(3, 10)]
    assert decide(view(executions), POLICY, NOON) == []
    # Once they reported, the rest of the first wave goes (up to max_in_flight).
    reported = [ex(k, 0, "committed") for k in range(3)] + [
        ex(k, 0, "pending") for k in range(3, 10)
    ]
    assert sorted(dispatched(decide(view(reported), POLICY, NOON))) == list(range(3, 10))


def test_offline_devices_and_closed_windows_get_nothing() -> None:
    executions = [ex(0, 0, "pending", online=False), ex(1, 0, "pending")]
    assert dispatched(decide(view(executions), POLICY, NOON)) == [1]
    night = parse_policy({**BASE, "maintenance_window": {"start": "02:00", "end": "05:00"}})
    assert decide(view(executions, policy=night), night, NOON) == []
    three_am = datetime(2026, 3, 4, 3, 0, tzinfo=UTC).timestamp()
    assert dispatched(decide(view(executions, policy=night), night, three_am)) == [1]


def test_failures_in_one_stratum_halt_naming_it_and_nothing_more_is_sent() -> None:
    executions = [ex(k, 0, "failed", "boot", rev="c") for k in range(6)]
    executions += [ex(k, 0, "committed") for k in range(6, 16)]
    executions += [ex(k, 0, "pending") for k in range(16, 30)]
    actions = decide(view(executions), POLICY, NOON)
    assert kinds(actions) == [Halt]
    halt = actions[0]
    assert isinstance(halt, Halt)
    assert halt.stratum == "hardware_revision=c"
    assert halt.action == "pause"


def test_halt_actions_follow_the_policy() -> None:
    executions = [ex(k, 0, "failed", "install") for k in range(8)] + [ex(8, 0, "committed")]
    cancel = parse_policy({"on_halt": {"action": "cancel_pending"}})
    actions = decide(view(executions, policy=cancel), cancel, NOON)
    assert kinds(actions) == [Halt, ReleasePending]
    back = parse_policy({"on_halt": {"action": "rollback", "rollback_to": "1.0.1"}})
    actions = decide(view(executions, policy=back, rollback_target="1.0.1"), back, NOON)
    assert kinds(actions) == [Halt, RollBack]
    rollback = actions[1]
    assert isinstance(rollback, RollBack)
    assert rollback.start
    assert rollback.version == "1.0.1"
    assert rollback.device_keys == (8,), "only the device that runs the release goes back"
    gone = decide(view(executions, policy=back, rollback_target=None), back, NOON)
    assert kinds(gone) == [Halt, Alert]


def test_a_small_sample_is_extended_from_later_waves() -> None:
    executions = [ex(k, 0, "committed") for k in range(5)]
    executions += [ex(k, 1, "pending") for k in range(5, 40)]
    actions = decide(view(executions, bake_started_at=NOON - 10), POLICY, NOON)
    assert kinds(actions)[:2] == [ResetBake, Extend]
    extend = actions[1]
    assert isinstance(extend, Extend)
    assert extend.wave == 0
    assert len(extend.device_keys) == 15
    # The moved devices are sent in the same tick (they are now in the started wave).
    assert set(dispatched(actions)) <= set(extend.device_keys)
    assert dispatched(actions)


def test_a_passed_wave_bakes_then_the_next_starts() -> None:
    executions = [ex(k, 0, "committed") for k in range(30)]
    executions += [ex(k, 1, "pending") for k in range(30, 40)]
    assert kinds(decide(view(executions), POLICY, NOON)) == [StartBake]
    baking = view(executions, bake_started_at=NOON - 300)
    assert decide(baking, POLICY, NOON) == [], "the bake is not over"
    done = view(executions, bake_started_at=NOON - 600)
    actions = decide(done, POLICY, NOON)
    assert actions[0] == Advance(1)
    assert sorted(dispatched(actions)) == list(range(30, 40))


def test_a_health_gate_halts_the_bake() -> None:
    executions = [ex(k, 0, "committed", finished=NOON - 7200) for k in range(30)]
    executions += [ex(k, 1, "pending") for k in range(30, 60)]
    faults = {k: tuple(NOON - 60 * i for i in range(1, 5)) for k in range(30)}
    sick = view(executions, bake_started_at=NOON - 7200, faults=faults)
    actions = decide(sick, POLICY, NOON)
    assert kinds(actions) == [Halt]
    assert actions[0].failure_class == "health"  # type: ignore[union-attr]
    assert "fault_rate" in actions[0].reason  # type: ignore[union-attr]


def test_the_last_wave_passing_completes_and_marks_pre_production() -> None:
    executions = [ex(k, 0, "committed") for k in range(30)] + [ex(30, 0, "pending", online=False)]
    actions = decide(view(executions, channel="pre-production", preprod_done=False), POLICY, NOON)
    assert kinds(actions) == [ReleasePending, Complete]
    assert actions[1] == Complete("", mark_preprod=True)


def test_a_small_fleet_completes_within_limits_or_halts_as_inconclusive() -> None:
    small = [ex(k, 0, "committed") for k in range(5)]
    actions = decide(view(small), POLICY, NOON)
    assert kinds(actions) == [ReleasePending, Complete]
    assert "below min_sample" in actions[1].note  # type: ignore[union-attr]
    bad = [*small, ex(5, 0, "failed", "download")]
    actions = decide(view(bad), POLICY, NOON)
    assert kinds(actions) == [Halt]
    assert actions[0].reason.startswith("inconclusive")  # type: ignore[union-attr]
    waiting = [*small, ex(6, 0, "pending", online=False)]
    assert kinds(decide(view(waiting), POLICY, NOON)) == [Wait]


def test_late_joiners_enter_the_earliest_wave_not_started() -> None:
    executions = [ex(k, 0, "sent") for k in range(3)] + [ex(k, 1, "pending") for k in range(3, 6)]
    joined = view(
        executions,
        waves_total=3,
        joiners=(dev(50), dev(51)),
        excluded=(Exclusion(52, "low_disk", "disk 95% full"),),
    )
    actions = decide(joined, POLICY, NOON)
    assert actions[:2] == [Join((50, 51), 1), Exclude(52, "low_disk", "disk 95% full")]


def test_a_rolled_back_rollout_keeps_sending_devices_back() -> None:
    executions = [ex(0, 0, "committed"), ex(1, 0, "committed", online=False), ex(2, 0, "sent")]
    rolled = view(
        executions,
        state="rolled_back",
        rollback_version="1.0.1",
        rollback_target="1.0.1",
        rollbacks=(RollbackAttempt(3, "pending"), RollbackAttempt(4, "committed")),
    )
    actions = decide(rolled, POLICY, NOON)
    assert actions[0] == RollBack("1.0.1", (0, 1))
    assert [a for a in actions if isinstance(a, Dispatch)] == [
        Dispatch(3, rollback=True),
        Dispatch(0, rollback=True),
    ]
    # Three failed attempts (or one security refusal) and the engine gives up.
    given_up = replace(
        rolled,
        executions=(ex(0, 0, "committed"),),
        rollbacks=(*(RollbackAttempt(0, "failed", "install") for _ in range(3)),),
    )
    assert decide(given_up, POLICY, NOON) == []


@pytest.mark.parametrize("state", ["draft", "paused", "halted", "completed", "cancelled"])
def test_nothing_happens_unless_running_or_rolled_back(state: str) -> None:
    executions = [ex(k, 0, "pending") for k in range(10)]
    assert decide(view(executions, state=state), POLICY, NOON) == []


def test_a_new_halt_criterion_is_one_class_in_the_registry(monkeypatch) -> None:
    class NoBootFailures:
        def check(self, group, outcomes, criterion, confidence):  # type: ignore[no-untyped-def]
            if criterion.failure_class == "boot" and failure_counts(outcomes, "boot")[0]:
                return Verdict(VerdictKind.HALT, f"a boot failure in {group}", stratum=group)
            return None

    monkeypatch.setattr(verdict, "HALT_CRITERIA", (*HALT_CRITERIA, NoBootFailures()))
    executions = [ex(0, 0, "failed", "boot")] + [ex(k, 0, "committed") for k in range(1, 40)]
    actions = decide(view(executions), POLICY, NOON)
    assert kinds(actions) == [Halt]
    assert actions[0].reason == "a boot failure in hardware_revision=a"  # type: ignore[union-attr]


def test_health_gates_are_looked_up_by_metric_and_unknown_ones_are_refused() -> None:
    assert set(HEALTH_GATES) == {"fault_rate", "reboot_rate", "temp_c"}
    with pytest.raises(PolicyError) as info:
        parse_policy({"health_gates": [{"metric": "humidity"}]})
    assert info.value.field == "health_gates[0].metric"
    assert info.value.code == "invalid_policy"


# --- properties over random views -------------------------------------------------------

STATUSES = ["pending", "sent", "in_progress", "committed", "failed", "cancelled"]
CLASSES = ["download", "install", "boot", "health", "timeout", "security"]


@st.composite
def random_views(draw: st.DrawFn) -> tuple[RolloutView, Policy, float]:
    waves = draw(st.integers(1, 4))
    window = draw(st.sampled_from([None, ("02:00", "05:00"), ("22:00", "04:00")]))
    policy = parse_policy(
        {
            "min_sample": draw(st.integers(1, 12)),
            "canary_in_flight": draw(st.integers(1, 8)),
            "max_in_flight": draw(st.integers(1, 30)),
            "bake_s": draw(st.sampled_from([0, 300])),
            "stratify_by": ["hardware_revision"],
            "maintenance_window": {"start": window[0], "end": window[1]} if window else None,
            "on_halt": {"action": draw(st.sampled_from(["pause", "cancel_pending"]))},
            "failure_criteria": [
                {
                    "failure_class": "any",
                    "max_rate": draw(st.sampled_from([0.1, 0.3, 0.5])),
                    "pass_gate": True,
                },
                {"failure_class": "boot", "max_rate": 0.05},
                {"failure_class": "security", "max_rate": 0.01, "max_failures": 0},
            ],
        }
    )
    current = draw(st.integers(0, waves - 1))
    mixed = draw(st.booleans())
    executions = []
    for key in range(draw(st.integers(0, 80))):
        wave = draw(st.integers(0, waves - 1))
        # Mostly what a real rollout looks like (started waves executed, later ones
        # pending), with every other state mixed in.
        usual = "committed" if wave <= current else "pending"
        status = draw(st.sampled_from([usual] * 14 + STATUSES if mixed else [usual]))
        failure = draw(st.sampled_from(CLASSES)) if status == "failed" else None
        executions.append(
            ex(
                key,
                wave,
                status,
                failure,
                online=draw(st.booleans()),
                rev=draw(st.sampled_from(["a", "b"])),
            )
        )
    now = NOON + draw(st.integers(0, 24)) * 3600
    state = draw(st.sampled_from(["running"] * 4 + ["paused", "halted", "draft", "completed"]))
    bake = draw(st.sampled_from([None, now - 100, now - 1000]))
    rollout = view(
        executions,
        policy=policy,
        state=state,
        waves_total=waves,
        current_wave=current,
        bake_started_at=bake,
        joiners=tuple(dev(100 + i) for i in range(draw(st.integers(0, 2)))),
    )
    return rollout, policy, now


def _final_wave(rollout: RolloutView, actions: list[object]) -> int:
    advances = [a.wave for a in actions if isinstance(a, Advance)]
    return advances[-1] if advances else rollout.current_wave


def _after_moves(rollout: RolloutView, actions: list[object]) -> list[ExecutionView]:
    """The executions as decide saw them when it chose whom to send (extended devices
    moved, joiners added as pending)."""
    executions = list(rollout.executions)
    for action in actions:
        if isinstance(action, Join):
            executions += [ExecutionView(d, action.wave, "pending") for d in rollout.joiners]
        if isinstance(action, Extend):
            moved = set(action.device_keys)
            executions = [
                replace(e, wave=action.wave)
                if e.device.key in moved and e.status == "pending"
                else e
                for e in executions
            ]
    return executions


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(random_views())
def test_never_dispatches_beyond_the_cap(case: tuple[RolloutView, Policy, float]) -> None:
    rollout, policy, now = case
    actions = decide(rollout, policy, now)
    sent = dispatched(actions)
    assert len(sent) == len(set(sent)), "one install per device"
    executions = _after_moves(rollout, actions)
    in_flight = sum(1 for e in executions if e.status in ("sent", "in_progress"))
    assert in_flight + len(sent) <= max(policy.max_in_flight, in_flight)
    if sent and _final_wave(rollout, actions) == 0:
        started = sum(
            1
            for e in executions
            if e.wave == 0 and e.status in ("sent", "in_progress", "committed", "failed")
        )
        if started < policy.canary_in_flight:
            assert started + len(sent) <= policy.canary_in_flight, "the canary cap holds"


@PROPERTY
@given(random_views())
def test_only_pending_online_devices_of_started_waves_inside_their_window_get_installs(
    case: tuple[RolloutView, Policy, float],
) -> None:
    rollout, policy, now = case
    actions = decide(rollout, policy, now)
    if not dispatched(actions):
        return
    assert rollout.state == "running", "nothing is sent while paused, halted or not started"
    assert not any(isinstance(a, Halt | Complete) for a in actions)
    wave = _final_wave(rollout, actions)
    by_key = {e.device.key: e for e in _after_moves(rollout, actions)}
    when = datetime.fromtimestamp(now, tz=UTC)
    for key in dispatched(actions):
        target = by_key[key]
        assert target.status == "pending"
        assert target.device.online
        assert target.wave <= wave
        assert in_maintenance_window(policy.maintenance_window, when, target.device.timezone)


@PROPERTY
@given(random_views())
def test_never_advances_past_an_undecided_wave(case: tuple[RolloutView, Policy, float]) -> None:
    rollout, policy, now = case
    actions = decide(rollout, policy, now)
    advances = [a for a in actions if isinstance(a, Advance)]
    if not advances:
        return
    assert len(advances) == 1
    assert rollout.bake_started_at is not None
    assert now - rollout.bake_started_at >= policy.bake_s
    executions = _after_moves(rollout, actions)
    current = rollout.current_wave
    judged = verdict.judge_wave(outcomes_of(executions, rollout.resumed_at), current, policy)
    assert judged.kind is VerdictKind.PASS
    for e in executions:
        if e.wave <= current:
            assert e.status not in ("sent", "in_progress")
            assert not (e.status == "pending" and e.device.online)
    assert advances[0].wave == min(e.wave for e in executions if e.wave > current)


@PROPERTY
@given(random_views())
def test_never_completes_with_evidence_above_the_limits(
    case: tuple[RolloutView, Policy, float],
) -> None:
    rollout, policy, now = case
    actions = decide(rollout, policy, now)
    if not any(isinstance(a, Complete) for a in actions):
        return
    outcomes = [o for o in outcomes_of(_after_moves(rollout, actions), rollout.resumed_at)]
    confidence = policy.confidence
    for criterion in policy.failure_criteria:
        failures, executed = failure_counts(outcomes, criterion.failure_class)
        assert executed > 0
        if criterion.pass_gate:
            assert failures / executed <= criterion.max_rate
        for rule in HALT_CRITERIA:
            assert rule.check("fleet", outcomes, criterion, confidence) is None
    assert not any(o.status in ("pending", "in_progress") for o in outcomes)
