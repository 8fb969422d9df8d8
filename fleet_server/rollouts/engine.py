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
ROLLBACK_ATTEMPTS = 3
"""How often a device is sent the rollback release before the engine gives up on it."""


def tick(session: Session, publisher: Publisher, *, now: float) -> list[str]:
    """Advance every active rollout once; returns a line per decision taken (for logs).

    Commits as it goes (dispatching commits before publishing)."""
    decisions: list[str] = []
    for execution in deployments.expire_silent(session, now=now):
        decisions.append(f"{execution.id}: timed out ({execution.reason})")
    session.commit()
    ids = session.execute(
        select(Rollout.id).where(Rollout.state.in_(("running", "rolled_back")))
    ).scalars()
    for rollout_id in list(ids):
        rollout = session.get(Rollout, rollout_id)
        if rollout is None:
            continue
        try:
            if rollout.state == "running":
                decisions.extend(_advance(session, publisher, rollout, now))
            elif _rollback_active(session, rollout):
                _dispatch_rollback(session, publisher, rollout, now)
            session.commit()
        except Exception:
            # One broken rollout must not stop the others; it is retried next tick.
            session.rollback()
            log.exception("rollout %s: tick failed; retrying at the next tick", rollout_id)
    return decisions


# --- one rollout ------------------------------------------------------------------------


def _executions(session: Session, rollout_id: str) -> list[Execution]:
    return list(
        session.execute(select(Execution).where(Execution.rollout_id == rollout_id))
        .unique()
        .scalars()
        .all()
    )


def _outcomes(executions: Sequence[Execution], since: float | None = None) -> list[Outcome]:
    """What the verdict sees. Executions that ended before ``since`` (an operator resumed a
    halted rollout, acknowledging them) are left out of the judgement."""
    outcomes = []
    for ex in executions:
        if since is not None and ex.finished_at is not None and ex.finished_at < since:
            continue
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
    outcomes = _outcomes(executions, rollout.resumed_at)
    verdict = judge_wave(outcomes, rollout.current_wave, policy)
    if verdict.kind is VerdictKind.HALT:
        return [*decisions, _halt(session, rollout, policy, verdict, now)]
    if verdict.kind is VerdictKind.EXTEND:
        rollout.bake_started_at = None  # the wave changed: a later pass bakes afresh
        moved = _extend(session, rollout, executions, policy, now)
        if moved:
            decisions.append(f"{rollout.id}: wave {rollout.current_wave} extended by {moved}")
        elif _evidence_exhausted(executions, rollout.current_wave):
            decisions.append(_finish_without_bound(session, rollout, outcomes, policy, now))
            if rollout.state != "running":
                return decisions
    if verdict.kind is VerdictKind.PASS:
        decision = _bake_or_advance(session, rollout, executions, policy, now)
        if decision:
            decisions.append(decision)
        if rollout.state != "running":
            return decisions
    # Decisions first: a failing publish below must not undo them.
    session.commit()
    decisions.extend(_dispatch(session, publisher, rollout, policy, now))
    return decisions


def _evidence_exhausted(executions: Sequence[Execution], wave: int) -> bool:
    """No device is left that could add evidence: nothing in flight, nothing pending in a
    later wave, and every pending device of this wave is offline."""
    for ex in executions:
        if ex.status in ("sent", "in_progress"):
            return False
        if ex.status == "pending" and ((ex.wave or 0) > wave or ex.device.presence == "online"):
            return False
    return True


def _finish_without_bound(
    session: Session,
    rollout: Rollout,
    outcomes: Sequence[Outcome],
    policy: Policy,
    now: float,
) -> str:
    """Every reachable device executed but the sample is too small for the confidence
    bound (a small fleet). Devices still offline keep the rollout running; otherwise it
    completes when the observed rates are within every criterion, and halts as
    inconclusive when not: it never completes on a failure rate above its limit."""
    if any(o.status == "deferred" for o in outcomes):
        return f"{rollout.id}: waiting for offline devices to decide wave {rollout.current_wave}"
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
            return _halt(session, rollout, policy, verdict, now)
    note = (
        f"whole target executed ({len(executed)} devices, below min_sample "
        f"{policy.min_sample}); observed failure rates within every criterion"
    )
    return _complete(session, rollout, now, note=note)


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
            if ex.status == "pending"
            and (ex.wave or 0) > rollout.current_wave
            and ex.device.presence == "online"
        ),
        key=lambda ex: (ex.wave or 0, ex.created_at, ex.id),
    )
    chosen = later[: max(policy.min_sample // 2, 10)]
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
    """Send the devices that run the release back to ``target`` (a known-good release with
    a release counter at least the release's, so agents accept it): every device of the
    rollout that reports the release's version, whatever its execution says (a device that
    timed out and committed late counts). Pending devices are released; devices still
    updating get their rollback once they report the version."""
    cancel_pending(session, rollout, now=now, reason="rollout rolled back")
    rollout.rollback_version = target.version
    created = _create_rollbacks(session, rollout, target, now)
    _event(
        session,
        rollout,
        "rollback_started",
        now=now,
        actor=ENGINE.label,
        message=f"{created} device(s) are sent back to {target.version}",
    )
    return created


def _rollback_candidates(session: Session, rollout: Rollout) -> list[Execution]:
    """Forward executions whose device still runs the release and should be sent back now:
    not updating any more, with no rollback under way or done, and fewer than
    ``ROLLBACK_ATTEMPTS`` failed rollbacks (a security refusal is not retried)."""
    version = _release_version(session, rollout)
    rb = rollback_id(rollout.id)
    attempts: dict[int, int] = {}
    covered: set[int] = set()
    for key, status, failure in session.execute(
        select(Execution.device_key, Execution.status, Execution.failure_class).where(
            Execution.rollout_id == rb
        )
    ):
        attempts[key] = attempts.get(key, 0) + 1
        if status != "failed" or failure == "security":
            covered.add(key)
    covered |= {key for key, n in attempts.items() if n >= ROLLBACK_ATTEMPTS}
    out: list[Execution] = []
    seen: set[int] = set()
    for ex in _executions(session, rollout.id):
        key = ex.device_key
        if key in covered or key in seen or ex.device.software_version != version:
            continue
        if ex.status in ("sent", "in_progress"):
            continue  # it ends first (committed, failed or timed out), then rolls back
        seen.add(key)
        out.append(ex)
    return out


def _create_rollbacks(session: Session, rollout: Rollout, target: Bundle, now: float) -> int:
    created = 0
    for ex in _rollback_candidates(session, rollout):
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
    return created


def _rollback_active(session: Session, rollout: Rollout) -> bool:
    """True while a rolled-back rollout still has devices updating, rollback installs not
    yet sent, or devices to send back (so finished rollbacks cost little per tick)."""
    rb = rollback_id(rollout.id)
    busy = session.execute(
        select(Execution.id)
        .where(
            Execution.rollout_id.in_((rollout.id, rb)),
            Execution.status.in_(("pending", "sent", "in_progress")),
        )
        .limit(1)
    ).first()
    return busy is not None or bool(_rollback_candidates(session, rollout))


def _release_version(session: Session, rollout: Rollout) -> str:
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    return bundle.version


def _dispatch_rollback(
    session: Session, publisher: Publisher, rollout: Rollout, now: float
) -> None:
    """While rolled back: devices that came to run the release after the rollback began
    get a rollback execution too, and pending rollback installs go to devices that are
    online."""
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
    _create_rollbacks(session, rollout, target, now)
    session.commit()
    for ex in _executions(session, rollback_id(rollout.id)):
        if ex.status == "pending" and ex.device.presence == "online":
            try:
                deployments.dispatch(
                    session, publisher, ex, now=now, ttl_s=ex.timeouts.get("accept_s", 600)
                )
            except deployments.DeploymentError as exc:
                log.warning("rollback dispatch %s: %s", ex.id, exc.message)
                if exc.code == "broker_unavailable":
                    return


def _dispatch(
    session: Session, publisher: Publisher, rollout: Rollout, policy: Policy, now: float
) -> list[str]:
    executions = _executions(session, rollout.id)
    in_flight = sum(1 for ex in executions if ex.status in ("sent", "in_progress"))
    cap = policy.max_in_flight
    if rollout.current_wave == 0:
        # The canary starts with `canary_in_flight` devices and sends the rest of the
        # first wave once those have reported. Cancelled devices do not count as sent.
        wave0 = [ex for ex in executions if (ex.wave or 0) == 0]
        started = sum(
            1 for ex in wave0 if ex.status in ("sent", "in_progress", "committed", "failed")
        )
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
            if exc.code == "broker_unavailable":
                break  # nothing else would get through either; next tick retries
            fresh = session.get(Execution, ex.id)
            if fresh is not None and fresh.status == "pending":
                deployments.cancel(
                    session, fresh, actor=ENGINE, now=now, reason=f"not sendable: {exc.message}"
                )
                session.commit()
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
    same stratum not updated yet and online (an offline control adds hours but cannot
    report a fault, which would make updated devices look worse)."""
    start = rollout.bake_started_at or rollout.wave_started_at or now
    updated = {
        ex.device_key: max(ex.finished_at or start, start)
        for ex in executions
        if ex.status == "committed"
    }
    control = {
        ex.device_key
        for ex in executions
        if ex.status == "pending" and ex.device.presence == "online"
    }
    if not updated or not control:
        return []
    keys = set(updated) | control
    faults: dict[int, list[float]] = {}
    for key, at in session.execute(
        select(Alarm.device_key, Alarm.raised_at).where(
            Alarm.raised_at >= start, Alarm.device_key.in_(sorted(keys))
        )
    ):
        faults.setdefault(key, []).append(at)
    reboots: dict[int, list[float]] = {}
    for key, at, data in session.execute(
        select(DeviceEvent.device_key, DeviceEvent.received_at, DeviceEvent.data).where(
            and_(
                DeviceEvent.kind == "boot",
                DeviceEvent.received_at >= start,
                DeviceEvent.device_key.in_(sorted(keys)),
            )
        )
    ):
        if int((data or {}).get("reason", 0)) >= 0x8000:
            reboots.setdefault(key, []).append(at)
    devices = {ex.device_key: ex.device for ex in executions if ex.device_key in keys}

    def since(rows: dict[int, list[float]], key: int, t0: float) -> int:
        return sum(1 for at in rows.get(key, ()) if at >= t0)

    groups: dict[str, list[int]] = {"fleet": sorted(keys)}
    for name in policy.stratify_by:
        for key in sorted(keys):
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
                t0 = updated[key]
                item["updated_hours"] += max(now - t0, 0.0) / 3600.0
                item["updated_faults"] += since(faults, key, t0)
                item["updated_reboots"] += since(reboots, key, t0)
                if isinstance(temp, int | float) and (devices[key].vitals_ts or 0) >= t0:
                    updated_temps.append(float(temp))
            else:
                item["control_hours"] += max(now - start, 0.0) / 3600.0
                item["control_faults"] += since(faults, key, start)
                item["control_reboots"] += since(reboots, key, start)
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
