"""The rollout engine's one door to the database and the broker: load, apply, publish.

:func:`load_view` reads everything :func:`~fleet_server.rollouts.decide.decide` looks at
for one rollout into an immutable :class:`~fleet_server.rollouts.view.RolloutView`;
:func:`apply` writes a tick's actions (history rows included) into the session, for the
caller to commit in one transaction; :func:`publish` then sends the installs the tick
decided. :func:`cancel_pending` and :func:`start_rollback` are the writes operator
actions share with the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Alarm, Bundle, Device, DeviceEvent, Execution
from fleet_server.db.rollout_models import Rollout, RolloutExclusion
from fleet_server.errors import FleetError
from fleet_server.rollouts import actions as act
from fleet_server.rollouts.decide import rollback_candidates
from fleet_server.rollouts.lifecycle import RolloutEvent as Event
from fleet_server.rollouts.policy import Policy, parse_policy, policy_to_dict
from fleet_server.rollouts.view import (
    DeviceView,
    Exclusion,
    ExecutionView,
    RollbackAttempt,
    RolloutView,
    rollback_id,
)
from fleet_server.services import deployments
from fleet_server.services.audit import Actor
from fleet_server.services.commands import Publisher
from fleet_server.services.rollouts_history import move, record_event
from fleet_server.services.rollouts_selection import parse_selector, select_devices, strata_of

log = logging.getLogger(__name__)

ENGINE = Actor("rollout-engine", "system")
ACTIVE_FOR_ENGINE = ("running", "rolled_back")
"""States in which the engine acts on a rollout."""


def expire_silent(session: Session, now: float) -> list[str]:
    """Fail every execution silent past its phase timeout (silence is a failure); a log
    line per execution failed."""
    return [
        f"{ex.id}: timed out ({ex.reason})" for ex in deployments.expire_silent(session, now=now)
    ]


def active_rollout_ids(session: Session) -> list[str]:
    """The rollouts the engine ticks: running ones and rolled-back ones (whose devices
    may still need sending back)."""
    return list(
        session.execute(
            select(Rollout.id).where(Rollout.state.in_(ACTIVE_FOR_ENGINE)).order_by(Rollout.id)
        ).scalars()
    )


# --- reading --------------------------------------------------------------------------------


def device_view(device: Device) -> DeviceView:
    """What decisions need of a registry device."""
    temp = (device.vitals or {}).get("temp_c")
    return DeviceView(
        key=device.id,
        device_id=device.device_id,
        online=device.presence == "online",
        timezone=device.timezone or "UTC",
        software_version=device.software_version,
        strata=strata_of(device),
        temp_c=float(temp) if isinstance(temp, int | float) else None,
        vitals_ts=device.vitals_ts,
    )


def _executions(session: Session, rollout_id: str) -> list[Execution]:
    return list(
        session.execute(select(Execution).where(Execution.rollout_id == rollout_id))
        .unique()
        .scalars()
        .all()
    )


def _execution_view(ex: Execution, devices: dict[int, DeviceView]) -> ExecutionView:
    device = devices.get(ex.device_key)
    if device is None:
        device = devices[ex.device_key] = device_view(ex.device)
    return ExecutionView(
        device=device,
        wave=ex.wave or 0,
        status=ex.status,
        failure_class=ex.failure_class,
        created_at=ex.created_at,
        finished_at=ex.finished_at,
        id=ex.id,
    )


def _rollbacks(session: Session, rollout_id: str) -> tuple[RollbackAttempt, ...]:
    return tuple(
        RollbackAttempt(ex.device_key, ex.status, ex.failure_class, ex.device.presence == "online")
        for ex in _executions(session, rollback_id(rollout_id))
    )


def _bundle_exists(session: Session, model: str, version: str | None) -> str | None:
    if not version:
        return None
    found = session.execute(
        select(Bundle.id).where(Bundle.model == model, Bundle.version == version)
    ).first()
    return version if found is not None else None


def _times_since(session: Session, keys: Sequence[int], start: float) -> tuple[Any, Any]:
    """Alarm times and error-reboot times per device since ``start``."""
    faults: dict[int, list[float]] = {}
    for key, at in session.execute(
        select(Alarm.device_key, Alarm.raised_at).where(
            Alarm.raised_at >= start, Alarm.device_key.in_(keys)
        )
    ):
        faults.setdefault(key, []).append(at)
    reboots: dict[int, list[float]] = {}
    for key, at, data in session.execute(
        select(DeviceEvent.device_key, DeviceEvent.received_at, DeviceEvent.data).where(
            DeviceEvent.kind == "boot",
            DeviceEvent.received_at >= start,
            DeviceEvent.device_key.in_(keys),
        )
    ):
        if int((data or {}).get("reason", 0)) >= 0x8000:
            reboots.setdefault(key, []).append(at)
    return (
        {k: tuple(v) for k, v in faults.items()},
        {k: tuple(v) for k, v in reboots.items()},
    )


def load_view(session: Session, rollout_id: str, now: float) -> RolloutView | None:
    """Everything the engine decides one rollout from, or None when it is gone."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return None
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    policy = parse_policy(rollout.policy)
    devices: dict[int, DeviceView] = {}
    rows = _executions(session, rollout.id)
    executions = tuple(_execution_view(ex, devices) for ex in rows)
    joiners: tuple[DeviceView, ...] = ()
    excluded: tuple[Exclusion, ...] = ()
    faults: dict[int, tuple[float, ...]] = {}
    reboots: dict[int, tuple[float, ...]] = {}
    if rollout.state == "running":
        known = {ex.device_key for ex in rows} | set(
            session.execute(
                select(RolloutExclusion.device_key).where(RolloutExclusion.rollout_id == rollout.id)
            ).scalars()
        )
        selection = select_devices(
            session, bundle, parse_selector(rollout.selector), rollout_id=rollout.id, known=known
        )
        joiners = tuple(device_view(d) for d in selection.eligible)
        excluded = tuple(Exclusion(d.id, r, detail) for d, r, detail in selection.excluded)
        if rollout.bake_started_at is not None:
            keys = {ex.device.key for ex in executions if ex.status == "committed"}
            keys |= {
                ex.device.key for ex in executions if ex.status == "pending" and ex.device.online
            }
            keys |= {d.key for d in joiners if d.online}
            if keys:
                faults, reboots = _times_since(session, sorted(keys), rollout.bake_started_at)
    target = policy.on_halt.rollback_to if rollout.state == "running" else rollout.rollback_version
    del now  # the view is what the database holds; decide gets the time itself
    return RolloutView(
        id=rollout.id,
        state=rollout.state,
        policy=policy,
        seed=rollout.seed,
        current_wave=rollout.current_wave,
        waves_total=rollout.waves_total,
        wave_started_at=rollout.wave_started_at,
        bake_started_at=rollout.bake_started_at,
        resumed_at=rollout.resumed_at,
        channel=rollout.channel,
        preprod_done=bundle.preprod_completed_at is not None,
        release_version=bundle.version,
        rollback_version=rollout.rollback_version,
        rollback_target=_bundle_exists(session, bundle.model, target),
        executions=executions,
        rollbacks=_rollbacks(session, rollout.id),
        joiners=joiners,
        excluded=excluded,
        faults=faults,
        reboots=reboots,
    )


# --- writing --------------------------------------------------------------------------------


def exclude(
    session: Session, rollout: Rollout, device_key: int, reason: str, detail: str, now: float
) -> None:
    """Record that the rollout leaves ``device_key`` out, and why (once per device)."""
    exists = session.execute(
        select(RolloutExclusion.id).where(
            RolloutExclusion.rollout_id == rollout.id, RolloutExclusion.device_key == device_key
        )
    ).first()
    if exists is None:
        session.add(
            RolloutExclusion(
                rollout_id=rollout.id, device_key=device_key, reason=reason, detail=detail, at=now
            )
        )


def cancel_pending(session: Session, rollout: Rollout, *, now: float, reason: str) -> int:
    """Release every device of the rollout that has not been sent its install yet."""
    count = 0
    for ex in _executions(session, rollout.id):
        if ex.status == "pending":
            deployments.cancel(session, ex, actor=ENGINE, now=now, reason=reason)
            count += 1
    return count


def _rollback_target(session: Session, rollout: Rollout, version: str) -> Bundle | None:
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    return session.execute(
        select(Bundle).where(Bundle.model == bundle.model, Bundle.version == version)
    ).scalar_one_or_none()


def _create_rollbacks(
    session: Session,
    rollout: Rollout,
    target: Bundle,
    forward: dict[int, Execution],
    keys: Sequence[int],
    now: float,
) -> int:
    created = 0
    for key in keys:
        ex = forward[key]
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
        except FleetError as exc:
            log.warning("rollback of %s: %s", ex.device.device_id, exc.message)
    return created


def _begin_rollback(
    session: Session,
    rollout: Rollout,
    target: Bundle,
    forward: dict[int, Execution],
    keys: Sequence[int],
    now: float,
) -> int:
    cancel_pending(session, rollout, now=now, reason="rollout rolled back")
    rollout.rollback_version = target.version
    created = _create_rollbacks(session, rollout, target, forward, keys, now)
    record_event(
        session,
        rollout,
        "rollback_started",
        now=now,
        actor=ENGINE.label,
        message=f"{created} device(s) are sent back to {target.version}",
    )
    return created


def start_rollback(session: Session, rollout: Rollout, target: Bundle, *, now: float) -> int:
    """Send the devices that run the release back to ``target`` (a known-good release with
    a release counter at least the release's, so agents accept it): every device of the
    rollout that reports the release's version, whatever its execution says (a device that
    timed out and committed late counts). Pending devices are released; devices still
    updating get their rollback once they report the version."""
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    rows = _executions(session, rollout.id)
    devices: dict[int, DeviceView] = {}
    keys = rollback_candidates(
        [_execution_view(ex, devices) for ex in rows],
        _rollbacks(session, rollout.id),
        bundle.version,
    )
    forward = {ex.device_key: ex for ex in rows}
    return _begin_rollback(session, rollout, target, forward, keys, now)


def apply(session: Session, view: RolloutView, actions: Sequence[act.Action], now: float) -> None:
    """Write one tick's decisions for ``view``'s rollout into the session (the caller
    commits them in one transaction). :class:`~fleet_server.rollouts.actions.Dispatch`
    actions are left for publishing after the commit."""
    rollout = session.get(Rollout, view.id)
    assert rollout is not None
    by_key = {ex.device.key: ex.id for ex in view.executions}
    for action in actions:
        _apply_one(session, rollout, view, by_key, action, now)


def _note(
    session: Session, rollout: Rollout, kind: str, wave: int, message: str, now: float
) -> None:
    record_event(session, rollout, kind, now=now, actor=ENGINE.label, wave=wave, message=message)


def _apply_one(
    session: Session,
    rollout: Rollout,
    view: RolloutView,
    by_key: dict[int, str],
    action: act.Action,
    now: float,
) -> None:
    actor = ENGINE.label
    if isinstance(action, act.Join):
        _join(session, rollout, view.policy, action, now)
    elif isinstance(action, act.Exclude):
        exclude(session, rollout, action.device_key, action.reason, action.detail, now)
    elif isinstance(action, act.ResetBake):
        rollout.bake_started_at = None
    elif isinstance(action, act.Extend):
        moved = set(action.device_keys)
        for ex in _executions(session, rollout.id):
            if ex.device_key in moved and ex.status == "pending":
                ex.wave = action.wave
        message = f"{len(action.device_keys)} device(s) added to wave {action.wave} to decide it"
        _note(session, rollout, "extended", action.wave, message, now)
    elif isinstance(action, act.StartBake):
        rollout.bake_started_at = now
        message = f"wave {action.wave} passed; baking for {action.bake_s}s"
        _note(session, rollout, "bake_started", action.wave, message, now)
    elif isinstance(action, act.Advance):
        rollout.current_wave = action.wave
        rollout.wave_started_at = now
        rollout.bake_started_at = None
        _note(session, rollout, "wave_started", action.wave, f"wave {action.wave} started", now)
    elif isinstance(action, act.Halt):
        rollout.halt_reason = action.reason
        rollout.halt_stratum = action.stratum
        rollout.halt_class = action.failure_class
        move(session, rollout, Event.HALT, now=now, actor=actor, message=action.reason)
    elif isinstance(action, act.ReleasePending):
        cancel_pending(session, rollout, now=now, reason=action.reason)
    elif isinstance(action, act.RollBack):
        _roll_back(session, rollout, by_key, action, now)
    elif isinstance(action, act.Complete):
        move(session, rollout, Event.COMPLETE, now=now, actor=actor, message=action.note)
        if action.mark_preprod:
            bundle = session.get(Bundle, rollout.bundle_id)
            if bundle is not None and bundle.preprod_completed_at is None:
                bundle.preprod_completed_at = now
    elif isinstance(action, act.Alert):
        log.error("rollout %s: %s", rollout.id, action.message)


def _join(session: Session, rollout: Rollout, policy: Policy, action: act.Join, now: float) -> None:
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    timeouts = policy_to_dict(policy)["timeouts"]
    added = 0
    for key in action.device_keys:
        device = session.get(Device, key)
        assert device is not None
        try:
            deployments.create_execution(
                session,
                device,
                bundle,
                actor=ENGINE,
                now=now,
                timeouts=timeouts,
                rollout_id=rollout.id,
                wave=action.wave,
                audit_entry=False,
            )
            added += 1
        except FleetError as exc:
            exclude(session, rollout, key, exc.code, exc.message, now)
    if added:
        message = f"{added} device(s) joined the target; they enter wave {action.wave}"
        _note(session, rollout, "joined", action.wave, message, now)


def _roll_back(
    session: Session, rollout: Rollout, by_key: dict[int, str], action: act.RollBack, now: float
) -> None:
    target = _rollback_target(session, rollout, action.version)
    if target is None:
        log.error("rollout %s: rollback bundle %s is gone", rollout.id, action.version)
        return
    forward = {key: session.get(Execution, by_key[key]) for key in action.device_keys}
    present = {key: ex for key, ex in forward.items() if ex is not None}
    if not action.start:
        _create_rollbacks(session, rollout, target, present, action.device_keys, now)
        return
    move(session, rollout, Event.ROLLBACK, now=now, actor=ENGINE.label, message=action.reason)
    _begin_rollback(session, rollout, target, present, action.device_keys, now)


# --- publishing -----------------------------------------------------------------------------


def publish(
    session: Session,
    publisher: Publisher,
    view: RolloutView,
    actions: Sequence[act.Action],
    now: float,
) -> int:
    """Send the install commands of the committed ``Dispatch`` actions, in their order;
    returns how many were sent. A forward install that cannot be sent releases its device
    (``not sendable``); a broker that is down stops the sending until the next tick."""
    wanted = [a for a in actions if isinstance(a, act.Dispatch)]
    if not wanted:
        return 0
    pending = pending_executions(session, view.id, rollback=any(a.rollback for a in wanted))
    sent = 0
    for action in wanted:
        ex = pending.get((action.rollback, action.device_key))
        if ex is None:
            continue  # its execution could not be created (e.g. busy): nothing to send
        ttl = action.ttl_s if action.ttl_s is not None else ex.timeouts.get("accept_s", 600)
        try:
            deployments.dispatch(session, publisher, ex, now=now, ttl_s=ttl)
            sent += 1
        except FleetError as exc:
            log.warning("rollout %s: could not send %s: %s", view.id, ex.id, exc.message)
            if exc.code == "broker_unavailable":
                break  # nothing else would get through either; next tick retries
            if not action.rollback:
                release_unsendable(session, ex.id, exc.message, now)
    return sent


def pending_executions(
    session: Session, rollout_id: str, *, rollback: bool
) -> dict[tuple[bool, int], Execution]:
    """Pending executions of the rollout (and, with ``rollback``, of its rollback) by
    ``(is a rollback, device key)``: what the tick's dispatches send."""
    ids = [rollout_id, rollback_id(rollout_id)] if rollback else [rollout_id]
    rows = (
        session.execute(
            select(Execution).where(Execution.rollout_id.in_(ids), Execution.status == "pending")
        )
        .unique()
        .scalars()
    )
    return {(ex.rollout_id != rollout_id, ex.device_key): ex for ex in rows}


def release_unsendable(session: Session, execution_id: str, why: str, now: float) -> None:
    """Release a device whose install cannot be sent (committed at once, so the next
    dispatch does not pick it again)."""
    fresh = session.get(Execution, execution_id)
    if fresh is not None and fresh.status == "pending":
        deployments.cancel(session, fresh, actor=ENGINE, now=now, reason=f"not sendable: {why}")
        session.commit()
