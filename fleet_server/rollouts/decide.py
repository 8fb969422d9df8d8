"""The rollout engine's decisions: ``decide(view, policy, now) -> list[Action]``, pure.

For a running rollout, in order:

1. devices that joined the target since the last tick enter the next wave that has not
   started (never around the waves);
2. the current wave is judged from the outcomes of devices that *executed*
   (:func:`~fleet_server.rollouts.verdict.judge_wave`): halt, wait, extend the sample, or
   pass; a passed wave bakes for ``bake_s`` under the health gates before the next starts;
3. installs go to pending devices of started waves that are online and inside their
   maintenance window, up to the concurrency cap (the canary cap in the first wave).

A halt applies the policy's action: ``pause`` (in-flight devices finish, nothing new
starts), ``cancel_pending``, or ``rollback`` (devices that committed are sent the known-good
release). A rolled-back rollout keeps sending back devices that come to run the release.
Nothing here reads a clock, a database or the network: ``now`` and the view are all it sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from fleet_server.rollouts.actions import (
    Action,
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
from fleet_server.rollouts.health import health_evidence
from fleet_server.rollouts.planner import (
    Candidate,
    in_maintenance_window,
    priority_order,
    wave_for_late_joiner,
)
from fleet_server.rollouts.policy import Policy
from fleet_server.rollouts.verdict import (
    Outcome,
    Verdict,
    VerdictKind,
    judge_health,
    judge_wave,
)
from fleet_server.rollouts.view import (
    IN_FLIGHT,
    OPEN,
    ExecutionView,
    RollbackAttempt,
    RolloutView,
)

ROLLBACK_ATTEMPTS = 3
"""How often a device is sent the rollback release before the engine gives up on it."""


def decide(view: RolloutView, policy: Policy, now: float) -> list[Action]:
    """Everything the engine does to one rollout at time ``now``, as actions to apply."""
    if view.state == "running":
        return _running(view, policy, now)
    if view.state == "rolled_back":
        return _rolled_back(view)
    return []


def outcomes_of(executions: Sequence[ExecutionView], since: float | None = None) -> list[Outcome]:
    """What the verdict sees. Executions that ended before ``since`` (an operator resumed a
    halted rollout, acknowledging them) are left out of the judgement."""
    outcomes = []
    for ex in executions:
        if since is not None and ex.finished_at is not None and ex.finished_at < since:
            continue
        if ex.status == "pending":
            status = "pending" if ex.device.online else "deferred"
        elif ex.status in IN_FLIGHT:
            status = "in_progress"
        else:
            status = ex.status
        outcomes.append(
            Outcome(ex.device.device_id, ex.wave, status, ex.failure_class, ex.device.strata)  # type: ignore[arg-type]
        )
    return outcomes


def _running(view: RolloutView, policy: Policy, now: float) -> list[Action]:
    actions: list[Action] = []
    executions = list(view.executions)
    if view.joiners:
        started = [i <= view.current_wave for i in range(max(view.waves_total, 1))]
        joined = wave_for_late_joiner(started)
        actions.append(Join(tuple(d.key for d in view.joiners), joined))
        executions += [
            ExecutionView(device, joined, "pending", created_at=now) for device in view.joiners
        ]
    actions += [Exclude(e.device_key, e.reason, e.detail) for e in view.excluded]
    wave, bake = view.current_wave, view.bake_started_at
    outcomes = outcomes_of(executions, view.resumed_at)
    verdict = judge_wave(outcomes, wave, policy)
    if verdict.kind is VerdictKind.HALT:
        return actions + _halt(view, policy, verdict, executions)
    if verdict.kind is VerdictKind.EXTEND:
        if bake is not None:
            actions.append(ResetBake())
        chosen = _extension(executions, wave, policy)
        if chosen:
            actions.append(Extend(chosen, wave))
            moved = set(chosen)
            executions = [
                replace(ex, wave=wave) if ex.device.key in moved and ex.status == "pending" else ex
                for ex in executions
            ]
        elif _evidence_exhausted(executions, wave):
            finish = _finish_without_bound(view, policy, outcomes, executions)
            actions += finish
            if any(isinstance(a, Halt | Complete) for a in finish):
                return actions
    if verdict.kind is VerdictKind.PASS:
        remaining = [ex for ex in executions if ex.wave > wave]
        if not remaining:
            # The last wave passed: there is no further wave for a bake to protect.
            return actions + _complete(view)
        if bake is None:
            actions.append(StartBake(wave, policy.bake_s))
        else:
            evidence = health_evidence(
                executions, policy, start=bake, now=now, faults=view.faults, reboots=view.reboots
            )
            health = judge_health(evidence, policy)
            if health is not None:
                return actions + _halt(view, policy, health, executions)
            if now - bake >= policy.bake_s:
                wave = min(ex.wave for ex in remaining)
                actions.append(Advance(wave))
    return actions + dispatches(executions, wave, policy, view.seed, now)


def _extension(executions: Sequence[ExecutionView], wave: int, policy: Policy) -> tuple[int, ...]:
    """Pending online devices of later waves to pull into ``wave``, so the sample grows
    until the failure criteria can be decided."""
    later = sorted(
        (ex for ex in executions if ex.status == "pending" and ex.wave > wave and ex.device.online),
        key=lambda ex: (ex.wave, ex.created_at, ex.id),
    )
    return tuple(ex.device.key for ex in later[: max(policy.min_sample // 2, 10)])


def _evidence_exhausted(executions: Sequence[ExecutionView], wave: int) -> bool:
    """No device is left that could add evidence: nothing in flight, nothing pending in a
    later wave, and every pending device of this wave is offline."""
    for ex in executions:
        if ex.status in IN_FLIGHT:
            return False
        if ex.status == "pending" and (ex.wave > wave or ex.device.online):
            return False
    return True


def _finish_without_bound(
    view: RolloutView,
    policy: Policy,
    outcomes: Sequence[Outcome],
    executions: Sequence[ExecutionView],
) -> list[Action]:
    """Every reachable device executed but the sample is too small for the confidence
    bound (a small fleet). Devices still offline keep the rollout running; otherwise it
    completes when the observed rates are within every criterion, and halts as
    inconclusive when not: it never completes on a failure rate above its limit."""
    if any(o.status == "deferred" for o in outcomes):
        return [Wait(f"waiting for offline devices to decide wave {view.current_wave}")]
    executed = [o for o in outcomes if o.status in ("committed", "failed")]
    for criterion in policy.failure_criteria:
        failures = sum(
            1
            for o in executed
            if o.status == "failed" and criterion.failure_class in ("any", o.failure_class)
        )
        rate = failures / len(executed) if executed else 1.0
        if not executed or rate > criterion.max_rate:
            verdict = Verdict(
                VerdictKind.HALT,
                (
                    f"inconclusive: every reachable device executed ({len(executed)}), "
                    f"{criterion.failure_class} failures {failures} "
                    f"({rate:.0%} > {criterion.max_rate:.0%} or no sample)"
                ),
                stratum="fleet",
                failure_class=criterion.failure_class,
            )
            return _halt(view, policy, verdict, executions)
    note = (
        f"whole target executed ({len(executed)} devices, below min_sample "
        f"{policy.min_sample}); observed failure rates within every criterion"
    )
    return _complete(view, note)


def _complete(view: RolloutView, note: str = "") -> list[Action]:
    return [
        ReleasePending("rollout completed before the device was reachable"),
        Complete(note, mark_preprod=view.channel == "pre-production" and not view.preprod_done),
    ]


def _halt(
    view: RolloutView, policy: Policy, verdict: Verdict, executions: Sequence[ExecutionView]
) -> list[Action]:
    action = policy.on_halt
    actions: list[Action] = [
        Halt(verdict.reason, verdict.stratum, verdict.failure_class, action.action)
    ]
    if action.action == "cancel_pending":
        actions.append(ReleasePending(f"rollout halted: {verdict.reason}"))
    elif action.action == "rollback" and action.rollback_to:
        if view.rollback_target != action.rollback_to:
            actions.append(Alert(f"rollback bundle {action.rollback_to} is gone"))
        else:
            keys = rollback_candidates(executions, view.rollbacks, view.release_version)
            actions.append(RollBack(action.rollback_to, keys, start=True, reason=verdict.reason))
    return actions


def rollback_candidates(
    executions: Sequence[ExecutionView], rollbacks: Sequence[RollbackAttempt], release_version: str
) -> tuple[int, ...]:
    """Devices that still run the release and should be sent back now: not updating any
    more, with no rollback under way or done, and fewer than ``ROLLBACK_ATTEMPTS`` failed
    rollbacks (a security refusal is not retried). A device that timed out and committed
    late counts: what it runs decides, not what its execution says."""
    attempts: dict[int, int] = {}
    covered: set[int] = set()
    for rb in rollbacks:
        key = rb.device_key
        attempts[key] = attempts.get(key, 0) + 1
        if rb.status != "failed" or rb.failure_class == "security":
            covered.add(key)
    covered |= {key for key, n in attempts.items() if n >= ROLLBACK_ATTEMPTS}
    out: list[int] = []
    for ex in executions:
        key = ex.device.key
        if key in covered or key in out or ex.device.software_version != release_version:
            continue
        if ex.status in IN_FLIGHT:
            continue  # it ends first (committed, failed or timed out), then rolls back
        out.append(key)
    return tuple(out)


def _rolled_back(view: RolloutView) -> list[Action]:
    """While rolled back: devices that came to run the release after the rollback began
    get a rollback execution too, and pending rollback installs go to devices online."""
    if not view.rollback_version or view.rollback_target != view.rollback_version:
        return []
    keys = rollback_candidates(view.executions, view.rollbacks, view.release_version)
    busy = any(ex.status in OPEN for ex in view.executions) or any(
        rb.status in OPEN for rb in view.rollbacks
    )
    if not busy and not keys:
        return []
    actions: list[Action] = []
    if keys:
        actions.append(RollBack(view.rollback_version, keys))
    online = {ex.device.key for ex in view.executions if ex.device.online}
    pending = [rb.device_key for rb in view.rollbacks if rb.status == "pending" and rb.online]
    pending += [key for key in keys if key in online]
    actions += [Dispatch(key, rollback=True) for key in pending]
    return actions


def dispatches(
    executions: Sequence[ExecutionView], wave: int, policy: Policy, seed: str, now: float
) -> list[Dispatch]:
    """Installs to send now: pending devices of started waves (``<= wave``) that are online
    and inside their maintenance window, in priority order, up to the cap. The first wave
    starts with ``canary_in_flight`` devices and sends the rest once those have reported;
    cancelled devices do not count as sent."""
    in_flight = sum(1 for ex in executions if ex.status in IN_FLIGHT)
    cap = policy.max_in_flight
    if wave == 0:
        wave0 = [ex for ex in executions if ex.wave == 0]
        started = sum(1 for ex in wave0 if ex.status in (*IN_FLIGHT, "committed", "failed"))
        executed = sum(1 for ex in wave0 if ex.status in ("committed", "failed"))
        if started < policy.canary_in_flight:
            cap = min(cap, policy.canary_in_flight - started + in_flight)
        elif executed < policy.canary_in_flight and in_flight > 0:
            cap = in_flight
    budget = cap - in_flight
    if budget <= 0:
        return []
    now_utc = datetime.fromtimestamp(now, tz=UTC)
    ready = [
        ex
        for ex in executions
        if ex.status == "pending"
        and ex.wave <= wave
        and ex.device.online
        and in_maintenance_window(policy.maintenance_window, now_utc, ex.device.timezone)
    ]
    rank = {
        device_id: i
        for i, device_id in enumerate(
            priority_order(
                [Candidate(ex.device.device_id, ex.device.strata) for ex in executions],
                policy,
                seed,
            )
        )
    }
    ready.sort(key=lambda ex: (ex.wave, rank.get(ex.device.device_id, 0)))
    return [Dispatch(ex.device.key, policy.timeouts.accept_s) for ex in ready[:budget]]
