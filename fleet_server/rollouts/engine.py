"""The rollout engine: ``tick(now)`` reconciles every active rollout with what devices did.

One tick, for each running rollout:

1. fail executions silent past their phase timeout (silence is a failure);
2. bring in devices that joined the target since the start (into the next wave that has
   not started, never around the waves);
3. judge the current wave from the outcomes of devices that *executed*
   (:func:`~fleet_server.rollouts.verdict.judge_wave`): halt, wait, extend the sample, or
   pass; a passed wave bakes for ``bake_s`` under the health gates before the next starts;
4. send installs to pending devices of started waves that are online and inside their
   maintenance window, up to the concurrency cap.

A halt applies the policy's action: ``pause`` (in-flight devices finish, nothing new
starts), ``cancel_pending``, or ``rollback`` (devices that committed are sent the known-good
release). The scheduler calls :func:`tick` every few seconds under a lock so only one
server instance acts; tests call it directly with the time they choose.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Alarm, Bundle, DeviceEvent, Execution
from fleet_server.db.rollout_models import Rollout, RolloutExclusion
from fleet_server.rollouts.lifecycle import RolloutEvent as Event
from fleet_server.rollouts.planner import (
    Candidate,
    in_maintenance_window,
    priority_order,
    wave_for_late_joiner,
)
from fleet_server.rollouts.policy import Policy, parse_policy, policy_to_dict
from fleet_server.rollouts.verdict import (
    Outcome,
    StratumHealth,
    Verdict,
    VerdictKind,
    judge_health,
    judge_wave,
)
from fleet_server.services import deployments
from fleet_server.services.audit import Actor
from fleet_server.services.commands import Publisher
from fleet_server.services.rollouts import (
    _event,
    _exclude,
    move,
    rollback_id,
    select_devices,
    strata_of,
)

log = logging.getLogger(__name__)

ENGINE = Actor("rollout-engine", "system")


def tick(session: Session, publisher: Publisher, *, now: float) -> list[str]:
    """Advance every active rollout once; returns a line per decision taken (for logs).

    Commits as it goes (dispatching commits before publishing)."""
    decisions: list[str] = []
    for execution in deployments.expire_silent(session, now=now):
        decisions.append(f"{execution.id}: timed out ({execution.reason})")
    session.commit()
    ids = session.execute(
        select(Rollout.id).where(Rollout.state.in_(("running", "rolled_back", "halted")))
    ).scalars()
    for rollout_id in list(ids):
        rollout = session.get(Rollout, rollout_id)
        if rollout is None:
            continue
        if rollout.state == "running":
            decisions.extend(_advance(session, publisher, rollout, now))
        _dispatch_rollback(session, publisher, rollout, now)
        session.commit()
    return decisions


# --- one rollout ------------------------------------------------------------------------


def _executions(session: Session, rollout_id: str) -> list[Execution]:
    return list(
        session.execute(select(Execution).where(Execution.rollout_id == rollout_id))
        .unique()
        .scalars()
        .all()
    )


def _outcomes(executions: Sequence[Execution]) -> list[Outcome]:
    outcomes = []
    for ex in executions:
        if ex.status == "pending":
            status = "pending" if ex.device.presence == "online" else "deferred"
        elif ex.status in ("sent", "in_progress"):
            status = "in_progress"
        else:
            status = ex.status
        outcomes.append(
            Outcome(
                ex.device.device_id, ex.wave or 0, status, ex.failure_class, strata_of(ex.device)
            )  # type: ignore[arg-type]
        )
    return outcomes


def _advance(session: Session, publisher: Publisher, rollout: Rollout, now: float) -> list[str]:
    policy = parse_policy(rollout.policy)
    decisions = _late_joiners(session, rollout, policy, now)
    executions = _executions(session, rollout.id)
    verdict = judge_wave(_outcomes(executions), rollout.current_wave, policy)
    if verdict.kind is VerdictKind.HALT:
        return [*decisions, _halt(session, rollout, policy, verdict, now)]
    if verdict.kind is VerdictKind.EXTEND:
        moved = _extend(session, rollout, executions, policy, now)
        if moved:
            decisions.append(f"{rollout.id}: wave {rollout.current_wave} extended by {moved}")
        elif not any(ex.status in ("sent", "in_progress") for ex in executions):
            decisions.append(_complete(session, rollout, now, note=verdict.reason))
            return decisions
    if verdict.kind is VerdictKind.PASS:
        decision = _bake_or_advance(session, rollout, executions, policy, now)
        if decision:
            decisions.append(decision)
        if rollout.state != "running":
            return decisions
    decisions.extend(_dispatch(session, publisher, rollout, policy, now))
    return decisions


def _late_joiners(session: Session, rollout: Rollout, policy: Policy, now: float) -> list[str]:
    from fleet_server.services.rollouts import parse_selector

    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    known = set(
        session.execute(
            select(Execution.device_key).where(Execution.rollout_id == rollout.id)
        ).scalars()
    )
    known |= set(
        session.execute(
            select(RolloutExclusion.device_key).where(RolloutExclusion.rollout_id == rollout.id)
        ).scalars()
    )
    selection = select_devices(
        session, bundle, parse_selector(rollout.selector), rollout_id=rollout.id, known=known
    )
    if not selection.eligible and not selection.excluded:
        return []
    started = [i <= rollout.current_wave for i in range(max(rollout.waves_total, 1))]
    wave = wave_for_late_joiner(started)
    timeouts = policy_to_dict(policy)["timeouts"]
    added = 0
    for device in selection.eligible:
        try:
            deployments.create_execution(
                session,
                device,
                bundle,
                actor=ENGINE,
                now=now,
                timeouts=timeouts,
                rollout_id=rollout.id,
                wave=wave,
                audit_entry=False,
            )
            added += 1
        except deployments.DeploymentError as exc:
            _exclude(session, rollout, device, exc.code, exc.message, now)
    for device, reason, detail in selection.excluded:
        _exclude(session, rollout, device, reason, detail, now)
    if not added:
        return []
    _event(
        session,
        rollout,
        "joined",
        now=now,
        actor=ENGINE.label,
        wave=wave,
        message=f"{added} device(s) joined the target; they enter wave {wave}",
    )
    return [f"{rollout.id}: {added} late joiner(s) into wave {wave}"]


def _extend(
    session: Session,
    rollout: Rollout,
    executions: Sequence[Execution],
    policy: Policy,
    now: float,
) -> int:
    """Pull pending devices of later waves into the current one, so the sample grows until
    the failure criteria can be decided."""
    later = sorted(
        (
            ex
            for ex in executions
            if ex.status == "pending" and (ex.wave or 0) > rollout.current_wave
        ),
        key=lambda ex: (ex.wave or 0, ex.created_at, ex.id),
    )
    online_first = sorted(later, key=lambda ex: ex.device.presence != "online")
    chosen = online_first[: max(policy.min_sample // 2, 10)]
    for ex in chosen:
        ex.wave = rollout.current_wave
    if chosen:
        _event(
            session,
            rollout,
            "extended",
            now=now,
            actor=ENGINE.label,
            wave=rollout.current_wave,
            message=f"{len(chosen)} device(s) added to wave {rollout.current_wave} to decide it",
        )
    return len(chosen)


def _bake_or_advance(
    session: Session,
    rollout: Rollout,
    executions: Sequence[Execution],
    policy: Policy,
    now: float,
) -> str | None:
    remaining = [ex for ex in executions if (ex.wave or 0) > rollout.current_wave]
    if not remaining:
        # The last wave passed: there is no further wave for a bake to protect.
        return _complete(session, rollout, now)
    if rollout.bake_started_at is None:
        rollout.bake_started_at = now
        _event(
            session,
            rollout,
            "bake_started",
            now=now,
            actor=ENGINE.label,
            wave=rollout.current_wave,
            message=f"wave {rollout.current_wave} passed; baking for {policy.bake_s}s",
        )
        return f"{rollout.id}: wave {rollout.current_wave} passed, baking"
    health = judge_health(health_evidence(session, rollout, executions, policy, now), policy)
    if health is not None:
        return _halt(session, rollout, policy, health, now)
    if now - rollout.bake_started_at < policy.bake_s:
        return None
    rollout.current_wave = min(ex.wave or 0 for ex in remaining)
    rollout.wave_started_at = now
    rollout.bake_started_at = None
    _event(
        session,
        rollout,
        "wave_started",
        now=now,
        actor=ENGINE.label,
        wave=rollout.current_wave,
        message=f"wave {rollout.current_wave} started",
    )
    return f"{rollout.id}: wave {rollout.current_wave} started"


def _complete(session: Session, rollout: Rollout, now: float, note: str = "") -> str:
    cancel_pending(
        session, rollout, now=now, reason="rollout completed before the device was reachable"
    )
    move(session, rollout, Event.COMPLETE, now=now, actor=ENGINE.label, message=note)
    bundle = session.get(Bundle, rollout.bundle_id)
    if (
        bundle is not None
        and rollout.channel == "pre-production"
        and bundle.preprod_completed_at is None
    ):
        bundle.preprod_completed_at = now
    return f"{rollout.id}: completed"


def _halt(session: Session, rollout: Rollout, policy: Policy, verdict: Verdict, now: float) -> str:
    rollout.halt_reason = verdict.reason
    rollout.halt_stratum = verdict.stratum
    rollout.halt_class = verdict.failure_class
    move(session, rollout, Event.HALT, now=now, actor=ENGINE.label, message=verdict.reason)
    action = policy.on_halt
    if action.action == "cancel_pending":
        cancel_pending(session, rollout, now=now, reason=f"rollout halted: {verdict.reason}")
    elif action.action == "rollback" and action.rollback_to:
        bundle = session.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        target = session.execute(
            select(Bundle).where(Bundle.model == bundle.model, Bundle.version == action.rollback_to)
        ).scalar_one_or_none()
        if target is None:
            log.error("rollout %s: rollback bundle %s is gone", rollout.id, action.rollback_to)
        else:
            move(
                session,
                rollout,
                Event.ROLLBACK,
                now=now,
                actor=ENGINE.label,
                message=verdict.reason,
            )
            start_rollback(session, rollout, target, now=now)
    return f"{rollout.id}: halted ({action.action}): {verdict.reason}"


def cancel_pending(session: Session, rollout: Rollout, *, now: float, reason: str) -> int:
    """Release every device of the rollout that has not been sent its install yet."""
    count = 0
    for ex in _executions(session, rollout.id):
        if ex.status == "pending":
            deployments.cancel(session, ex, actor=ENGINE, now=now, reason=reason)
            count += 1
    return count


def start_rollback(session: Session, rollout: Rollout, target: Bundle, *, now: float) -> int:
    """Send devices that took the release back to ``target`` (a known-good release):
    every device whose execution committed, or is still in flight (it gets the rollback
    once it ends). Pending devices are released."""
    cancel_pending(session, rollout, now=now, reason="rollout rolled back")
    rollout.rollback_version = target.version
    created = 0
    for ex in _executions(session, rollout.id):
        if ex.status not in ("committed", "sent", "in_progress"):
            continue
        if ex.status == "committed":
            try:
                deployments.create_execution(
                    session,
                    ex.device,
                    target,
                    actor=ENGINE,
                    now=now,
                    timeouts=ex.timeouts,
                    rollout_id=rollback_id(rollout.id),
                    wave=0,
                    audit_entry=False,
                )
                created += 1
            except deployments.DeploymentError as exc:
                log.warning("rollback of %s: %s", ex.device.device_id, exc.message)
    _event(
        session,
        rollout,
        "rollback_started",
        now=now,
        actor=ENGINE.label,
        message=f"{created} device(s) are sent back to {target.version}",
    )
    return created


def _dispatch_rollback(
    session: Session, publisher: Publisher, rollout: Rollout, now: float
) -> None:
    """While rolled back: devices whose forward install committed after the rollback
    began get a rollback execution too, and pending rollback installs go to devices that
    are online."""
    if rollout.state != "rolled_back" or not rollout.rollback_version:
        return
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    target = session.execute(
        select(Bundle).where(
            Bundle.model == bundle.model, Bundle.version == rollout.rollback_version
        )
    ).scalar_one_or_none()
    if target is None:
        return
    rb = rollback_id(rollout.id)
    covered = set(
        session.execute(select(Execution.device_key).where(Execution.rollout_id == rb)).scalars()
    )
    for ex in _executions(session, rollout.id):
        if ex.status == "committed" and ex.device_key not in covered:
            try:
                deployments.create_execution(
                    session,
                    ex.device,
                    target,
                    actor=ENGINE,
                    now=now,
                    timeouts=ex.timeouts,
                    rollout_id=rb,
                    wave=0,
                    audit_entry=False,
                )
            except deployments.DeploymentError as exc:
                log.warning("rollback of %s: %s", ex.device.device_id, exc.message)
    for ex in _executions(session, rb):
        if ex.status == "pending" and ex.device.presence == "online":
            try:
                deployments.dispatch(
                    session, publisher, ex, now=now, ttl_s=ex.timeouts.get("accept_s", 600)
                )
            except deployments.DeploymentError as exc:
                log.warning("rollback dispatch %s: %s", ex.id, exc.message)
                return


def _dispatch(
    session: Session, publisher: Publisher, rollout: Rollout, policy: Policy, now: float
) -> list[str]:
    executions = _executions(session, rollout.id)
    in_flight = sum(1 for ex in executions if ex.status in ("sent", "in_progress"))
    cap = policy.max_in_flight
    if rollout.current_wave == 0:
        executed = sum(
            1 for ex in executions if (ex.wave or 0) == 0 and ex.status in ("committed", "failed")
        )
        if executed < policy.canary_in_flight:
            cap = min(cap, policy.canary_in_flight)
            sent_so_far = sum(
                1 for ex in executions if (ex.wave or 0) == 0 and ex.status != "pending"
            )
            cap = max(0, min(cap, policy.canary_in_flight - sent_so_far + in_flight))
    budget = cap - in_flight
    if budget <= 0:
        return []
    now_utc = datetime.fromtimestamp(now, tz=UTC)
    ready = [
        ex
        for ex in executions
        if ex.status == "pending"
        and (ex.wave or 0) <= rollout.current_wave
        and ex.device.presence == "online"
        and in_maintenance_window(policy.maintenance_window, now_utc, ex.device.timezone or "UTC")
    ]
    rank = {
        device_id: i
        for i, device_id in enumerate(
            priority_order(
                [Candidate(ex.device.device_id, strata_of(ex.device)) for ex in executions],
                policy,
                rollout.seed,
            )
        )
    }
    ready.sort(key=lambda ex: (ex.wave or 0, rank.get(ex.device.device_id, 0)))
    sent = 0
    for ex in ready[:budget]:
        try:
            deployments.dispatch(session, publisher, ex, now=now, ttl_s=policy.timeouts.accept_s)
            sent += 1
        except deployments.DeploymentError as exc:
            log.warning("rollout %s: could not send %s: %s", rollout.id, ex.id, exc.message)
            break
    return [f"{rollout.id}: sent {sent} install(s)"] if sent else []


# --- health evidence ----------------------------------------------------------------------


def health_evidence(
    session: Session,
    rollout: Rollout,
    executions: Sequence[Execution],
    policy: Policy,
    now: float,
) -> list[StratumHealth]:
    """Per stratum, during the bake: faults and error reboots per device-hour and the
    latest temperatures of updated devices (after they committed) against devices of the
    same stratum not updated yet."""
    start = rollout.bake_started_at or rollout.wave_started_at or now
    updated = {
        ex.device_key: max(ex.finished_at or start, start)
        for ex in executions
        if ex.status == "committed"
    }
    control = {ex.device_key for ex in executions if ex.status == "pending"}
    if not updated or not control:
        return []
    keys = list(updated) + list(control)
    alarms = session.execute(
        select(Alarm.device_key, Alarm.raised_at).where(
            Alarm.device_key.in_(keys), Alarm.raised_at >= start
        )
    ).all()
    boots = session.execute(
        select(DeviceEvent.device_key, DeviceEvent.received_at, DeviceEvent.data).where(
            and_(
                DeviceEvent.device_key.in_(keys),
                DeviceEvent.kind == "boot",
                DeviceEvent.received_at >= start,
            )
        )
    ).all()
    devices = {
        ex.device_key: ex.device
        for ex in executions
        if ex.device_key in updated or ex.device_key in control
    }

    def counts(rows: Sequence[Any], key: int, since: float, *, error_boot: bool = False) -> int:
        total = 0
        for row in rows:
            if row[0] != key or row[1] < since:
                continue
            if error_boot and int((row[2] or {}).get("reason", 0)) < 0x8000:
                continue
            total += 1
        return total

    groups: dict[str, list[int]] = {"fleet": keys}
    for name in policy.stratify_by:
        for key in keys:
            value = strata_of(devices[key]).get(name)
            if value is not None:
                groups.setdefault(f"{name}={value}", []).append(key)
    evidence = []
    for label, members in groups.items():
        item: dict[str, Any] = {
            "updated_faults": 0,
            "control_faults": 0,
            "updated_reboots": 0,
            "control_reboots": 0,
            "updated_hours": 0.0,
            "control_hours": 0.0,
        }
        updated_temps: list[float] = []
        control_temps: list[float] = []
        for key in members:
            vitals = devices[key].vitals or {}
            temp = vitals.get("temp_c")
            if key in updated:
                since = updated[key]
                item["updated_hours"] += max(now - since, 0.0) / 3600.0
                item["updated_faults"] += counts(alarms, key, since)
                item["updated_reboots"] += counts(boots, key, since, error_boot=True)
                if isinstance(temp, int | float) and (devices[key].vitals_ts or 0) >= since:
                    updated_temps.append(float(temp))
            else:
                item["control_hours"] += max(now - start, 0.0) / 3600.0
                item["control_faults"] += counts(alarms, key, start)
                item["control_reboots"] += counts(boots, key, start, error_boot=True)
                if isinstance(temp, int | float):
                    control_temps.append(float(temp))
        evidence.append(
            StratumHealth(label, **item, updated_temps=updated_temps, control_temps=control_temps)
        )
    return evidence


# --- the scheduled job ----------------------------------------------------------------------

ADVISORY_LOCK_KEY = 0x45_44_47_45_52_4F  # "EDGERO"
"""PostgreSQL advisory lock held by the server instance that ticks."""


class RolloutTickJob:
    """The scheduler job (``fn(sessions, settings, now)``) that runs :func:`tick`.

    On PostgreSQL the tick runs only while this process holds a session-level advisory
    lock on a connection of its own, so of several server instances one acts per tick;
    SQLite has a single writer anyway.
    """

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def __call__(self, sessions: Any, settings: Any, now: float) -> list[str]:
        """One tick under the engine lock; returns the decisions taken (logged)."""
        del settings
        from sqlalchemy import text

        with sessions() as session:
            engine = session.get_bind()
            if engine.dialect.name != "postgresql":
                return tick(session, self.publisher, now=now)
            with engine.connect() as lock:
                key = {"key": ADVISORY_LOCK_KEY}
                if not lock.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
                    return []
                try:
                    return tick(session, self.publisher, now=now)
                finally:
                    lock.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                    lock.commit()
