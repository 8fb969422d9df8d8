"""Staged rollouts over the device registry: create (or dry-run), act, explain, report.

A rollout is a bundle, a target selection (a :class:`DeviceFilter` over the registry) and
a :class:`~fleet_server.rollouts.policy.Policy`. Starting it plans every eligible device
into a wave (one pending deployment execution each) and records every device the
selection matched but the rollout leaves out, with the reason. The engine
(:mod:`fleet_server.rollouts.engine`) then moves it forward, tick by tick.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import Alarm, Bundle, Device, Execution
from fleet_server.db.rollout_models import Rollout, RolloutEvent, RolloutExclusion
from fleet_server.rollouts.lifecycle import (
    ACTIVE,
    RolloutState,
    transition,
)
from fleet_server.rollouts.lifecycle import (
    RolloutEvent as Event,
)
from fleet_server.rollouts.planner import Candidate, plan_waves
from fleet_server.rollouts.policy import Policy, PolicyError, parse_policy, policy_to_dict
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.deployments import (
    OPEN_STATUSES,
    DeploymentError,
    compatibility_problem,
    create_execution,
)
from fleet_server.services.registry import DeviceFilter

LOW_DISK_PCT = 90.0
"""Devices whose disk is at least this full are left out (an update needs room)."""

STRATA_COLUMNS = {
    "hardware_revision": "hw_revision",
    "batch": "batch",
    "region": "region",
    "model": "model",
}

ROLLOUT_ERROR_STATUS = {
    "not_found": 404,
    "invalid_policy": 422,
    "invalid_selector": 422,
    "no_devices": 422,
    "blocked_version": 409,
    "conflict": 409,
    "illegal_transition": 409,
    "preprod_required": 409,
    "forbidden": 403,
    "invalid_rollback": 422,
}


class RolloutError(ValueError):
    """A rollout request refused; ``code`` is stable, ``details`` optional JSON."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


# --- selection -----------------------------------------------------------------------


def parse_selector(data: dict[str, Any] | None) -> DeviceFilter:
    """A registry filter from JSON; unknown keys and bad values name the key."""
    data = dict(data or {})
    known = set(DeviceFilter.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise RolloutError(
            "invalid_selector",
            f"selector: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
        )
    for key in ("produced_from", "produced_to", "activated_from", "activated_to"):
        if isinstance(data.get(key), str):
            try:
                data[key] = date.fromisoformat(data[key])
            except ValueError:
                raise RolloutError("invalid_selector", f"selector.{key}: not a date") from None
    if "tags" in data and not (
        isinstance(data["tags"], list) and all(isinstance(t, str) for t in data["tags"])
    ):
        raise RolloutError("invalid_selector", "selector.tags: a list of strings")
    for key, value in data.items():
        if value is None or key in ("tags",) or isinstance(value, date):
            continue
        if key == "has_open_faults":
            if not isinstance(value, bool):
                raise RolloutError("invalid_selector", f"selector.{key}: true or false")
        elif key in ("seen_after", "seen_before"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RolloutError("invalid_selector", f"selector.{key}: unix seconds")
        elif not isinstance(value, str) or len(value) > 256:
            raise RolloutError("invalid_selector", f"selector.{key}: a string")
    return DeviceFilter(**data)


def selector_to_dict(selector: DeviceFilter) -> dict[str, Any]:
    """The non-empty fields of a selector, JSON-ready."""
    out: dict[str, Any] = {}
    for name in DeviceFilter.__dataclass_fields__:
        value = getattr(selector, name)
        if value is None or value == []:
            continue
        out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def strata_of(device: Device) -> dict[str, str]:
    """The device's value for every field a canary can be stratified by."""
    out: dict[str, str] = {}
    for name, column in STRATA_COLUMNS.items():
        value = getattr(device, column)
        if value is not None:
            out[name] = str(value)
    return out


@dataclass
class Selection:
    """Devices the selector matched, split into eligible ones and exclusions."""

    eligible: list[Device] = field(default_factory=list)
    excluded: list[tuple[Device, str, str]] = field(default_factory=list)


def _recall_holds(session: Session, rollout_id: str | None = None) -> set[int]:
    """Devices held by an open recall, except those the campaign's own remedy rollout
    (``rollout_id``) may update."""
    from fleet_server.services.recalls import recall_held_device_keys, remedy_rollout_exempt

    held = set(recall_held_device_keys(session))
    if rollout_id:
        held -= set(remedy_rollout_exempt(session, rollout_id))
    return held


def _blocked_versions(session: Session) -> dict[str, str]:
    from fleet_server.services.recalls import blocked_versions

    return dict(blocked_versions(session))


def select_devices(
    session: Session,
    bundle: Bundle,
    selector: DeviceFilter,
    *,
    rollout_id: str | None = None,
    known: set[int] | None = None,
) -> Selection:
    """Match the selector against the registry and decide, device by device, who may take
    ``bundle``. ``known`` device keys (already planned or excluded) are skipped."""
    query = select(Device).where(*selector.clauses(), Device.status == "active")
    devices = [d for d in session.execute(query).scalars() if not known or d.id not in known]
    if not devices:
        return Selection()
    keys = [d.id for d in devices]
    critical = set(
        session.execute(
            select(Alarm.device_key).where(
                Alarm.device_key.in_(keys), Alarm.state == "open", Alarm.severity == "critical"
            )
        ).scalars()
    )
    busy = {
        row.device_key: row
        for row in session.execute(
            select(Execution.device_key, Execution.rollout_id, Execution.id).where(
                Execution.device_key.in_(keys), Execution.status.in_(OPEN_STATUSES)
            )
        )
    }
    failed_before = set(
        session.execute(
            select(Execution.device_key).where(
                Execution.device_key.in_(keys),
                Execution.bundle_id == bundle.id,
                Execution.status == "failed",
                Execution.failure_class != "timeout",
            )
        ).scalars()
    )
    holds = _recall_holds(session, rollout_id)
    result = Selection()
    for device in devices:
        reason = _exclusion(device, bundle, critical, busy, failed_before, holds, rollout_id)
        if reason is None:
            result.eligible.append(device)
        else:
            result.excluded.append((device, reason[0], reason[1]))
    return result


def _exclusion(
    device: Device,
    bundle: Bundle,
    critical: set[int],
    busy: dict[int, Any],
    failed_before: set[int],
    holds: set[int],
    rollout_id: str | None,
) -> tuple[str, str] | None:
    problem = compatibility_problem(
        device.model, device.hw_revision, bundle.model, list(bundle.hardware_revisions)
    )
    if problem:
        return "incompatible", problem
    if device.software_version == bundle.version:
        return "up_to_date", f"already runs {bundle.version}"
    if device.id in failed_before:
        return "quarantined", f"{bundle.version} already failed on this device"
    if device.id in critical:
        return "critical_fault", "has an open critical alarm"
    disk = (device.vitals or {}).get("disk_pct")
    if isinstance(disk, int | float) and disk >= LOW_DISK_PCT:
        return "low_disk", f"disk {disk:.0f}% full (limit {LOW_DISK_PCT:.0f}%)"
    if device.id in holds:
        return "recall_hold", "held by an open recall campaign"
    if device.id in busy and busy[device.id].rollout_id != rollout_id:
        other = busy[device.id].rollout_id or busy[device.id].id
        return "busy", f"already updating in {other}"
    return None


# --- plan / dry run ---------------------------------------------------------------------


@dataclass
class Plan:
    """Who goes in which wave and who is left out (and why)."""

    waves: list[list[str]]
    excluded: list[dict[str, str]]
    strata: dict[str, dict[str, str]]

    def summary(self) -> dict[str, Any]:
        """JSON-ready plan: waves with their strata counts, exclusions by reason."""
        waves = []
        for index, wave in enumerate(self.waves):
            by_revision = Counter(self.strata[d].get("hardware_revision", "?") for d in wave)
            waves.append(
                {
                    "wave": index,
                    "size": len(wave),
                    "devices": wave,
                    "hardware_revisions": dict(sorted(by_revision.items())),
                }
            )
        reasons = Counter(e["reason"] for e in self.excluded)
        return {
            "waves": waves,
            "targeted": sum(len(w) for w in self.waves),
            "excluded": self.excluded,
            "excluded_by_reason": dict(sorted(reasons.items())),
        }


def make_plan(
    session: Session, bundle: Bundle, selector: DeviceFilter, policy: Policy, seed: str
) -> Plan:
    """The plan a rollout with these parameters would start with (no writes)."""
    selection = select_devices(session, bundle, selector)
    candidates = [Candidate(d.device_id, strata_of(d)) for d in selection.eligible]
    return Plan(
        waves=plan_waves(candidates, policy, seed),
        excluded=[
            {"device_id": d.device_id, "reason": r, "detail": detail}
            for d, r, detail in selection.excluded
        ],
        strata={c.device_id: dict(c.strata) for c in candidates},
    )


# --- lifecycle ---------------------------------------------------------------------------


def _event(
    session: Session,
    rollout: Rollout,
    kind: str,
    *,
    now: float,
    actor: str,
    message: str = "",
    from_state: str | None = None,
    to_state: str | None = None,
    wave: int | None = None,
) -> None:
    session.add(
        RolloutEvent(
            rollout_id=rollout.id,
            at=now,
            kind=kind,
            from_state=from_state,
            to_state=to_state,
            wave=wave,
            message=message,
            actor=actor,
        )
    )


def move(
    session: Session,
    rollout: Rollout,
    event: Event | str,
    *,
    now: float,
    actor: str,
    message: str = "",
) -> None:
    """Apply a lifecycle event (raises ``illegal_transition``) and record it."""
    before = rollout.state
    try:
        after = transition(before, event)
    except ValueError as exc:
        raise RolloutError("illegal_transition", str(exc)) from None
    rollout.state = after.value
    rollout.updated_at = now
    if after is RolloutState.RUNNING and rollout.started_at is None:
        rollout.started_at = now
    if after.value in ("completed", "cancelled", "rolled_back"):
        rollout.finished_at = now
    _event(
        session,
        rollout,
        str(Event(event).value),
        now=now,
        actor=actor,
        message=message,
        from_state=before,
        to_state=after.value,
        wave=rollout.current_wave,
    )


def create_rollout(
    session: Session,
    *,
    name: str,
    bundle: Bundle,
    selector: dict[str, Any] | None,
    policy: dict[str, Any] | None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> Rollout:
    """A draft rollout (validated, audited, not committed)."""
    try:
        parsed = parse_policy(policy)
    except PolicyError as exc:
        raise RolloutError("invalid_policy", str(exc), {"field": exc.field}) from None
    filt = parse_selector(selector)
    blocked = _blocked_versions(session)
    if bundle.version in blocked:
        raise RolloutError(
            "blocked_version",
            f"version {bundle.version} is blocked by recall {blocked[bundle.version]}",
        )
    if parsed.on_halt.action == "rollback":
        try:
            _rollback_bundle(session, bundle, parsed.on_halt.rollback_to or "")
        except RolloutError as exc:
            raise RolloutError("invalid_policy", exc.message, exc.details) from None
    rollout = Rollout(
        id="ro-" + uuid.uuid4().hex[:16],
        name=name.strip() or bundle.name,
        bundle_id=bundle.id,
        selector=selector_to_dict(filt),
        policy=policy_to_dict(parsed),
        channel=filt.channel or "production",
        state=RolloutState.DRAFT.value,
        seed=uuid.uuid4().hex,
        waves_total=0,
        current_wave=0,
        forced=False,
        created_at=now,
        created_by=actor.label,
        updated_at=now,
    )
    session.add(rollout)
    session.flush()
    _event(session, rollout, "created", now=now, actor=actor.label, to_state="draft")
    audit.record(
        session,
        actor,
        "rollout.create",
        "rollout",
        rollout.id,
        now=now,
        after=rollout_summary(rollout, bundle),
        request_id=request_id,
    )
    return rollout


def _rollback_bundle(
    session: Session, bundle: Bundle, version: str, *, field: str = "on_halt.rollback_to"
) -> Bundle:
    """The known-good bundle to go back to: same model, and a release counter no lower than
    the release's, because agents refuse to go down in release order (re-publish the old
    version with a higher counter to roll back to it)."""
    target = session.execute(
        select(Bundle).where(Bundle.model == bundle.model, Bundle.version == version)
    ).scalar_one_or_none()
    if target is None:
        raise RolloutError(
            "invalid_rollback",
            f"{field}: no published {bundle.model} bundle of version {version!r}",
            {"field": field},
        )
    if target.release_counter < bundle.release_counter:
        raise RolloutError(
            "invalid_rollback",
            f"{field}: {target.name} has release counter {target.release_counter}, below the "
            f"release's {bundle.release_counter}; devices refuse to go down in release order. "
            f"Re-publish {version} with a release counter of at least {bundle.release_counter}.",
            {"field": field},
        )
    return target


def start_rollout(
    session: Session,
    rollout: Rollout,
    *,
    actor: Actor,
    now: float,
    force_reason: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Plan the waves, create a pending execution per device, record exclusions, run.

    A production rollout needs the bundle to have completed a pre-production rollout,
    unless an admin forces it with a reason (audited). Devices already planned in another
    active rollout make the start fail (``conflict``) naming that rollout.
    """
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    policy = parse_policy(rollout.policy)
    if rollout.state not in ("draft", "scheduled"):
        raise RolloutError("illegal_transition", f"cannot start a rollout that is {rollout.state}")
    if rollout.channel == "production" and bundle.preprod_completed_at is None:
        if not force_reason:
            raise RolloutError(
                "preprod_required",
                f"{bundle.name} has not completed a pre-production rollout; an admin may force "
                "it with a reason",
            )
        if actor.role not in ("admin", "system"):
            raise RolloutError("forbidden", "only an admin may force a production rollout")
        rollout.forced, rollout.force_reason = True, force_reason
    selection = select_devices(
        session, bundle, parse_selector(rollout.selector), rollout_id=rollout.id
    )
    conflicts = _conflicting_rollouts(session, selection, rollout.id)
    if conflicts:
        raise RolloutError(
            "conflict",
            "devices of this rollout are already in active rollout(s) "
            + ", ".join(f"{rid} ({n} devices)" for rid, n in conflicts.items()),
            {"rollouts": conflicts},
        )
    candidates = [Candidate(d.device_id, strata_of(d)) for d in selection.eligible]
    if not candidates:
        raise RolloutError(
            "no_devices",
            "no eligible device matches the selector",
            {"excluded": Counter(r for _d, r, _x in selection.excluded)},
        )
    waves = plan_waves(candidates, policy, rollout.seed)
    by_id = {d.device_id: d for d in selection.eligible}
    timeouts = policy_to_dict(policy)["timeouts"]
    for index, wave in enumerate(waves):
        for device_id in wave:
            try:
                create_execution(
                    session,
                    by_id[device_id],
                    bundle,
                    actor=actor,
                    now=now,
                    timeouts=timeouts,
                    rollout_id=rollout.id,
                    wave=index,
                    audit_entry=False,
                )
            except DeploymentError as exc:
                _exclude(session, rollout, by_id[device_id], exc.code, exc.message, now)
    for device, reason, detail in selection.excluded:
        _exclude(session, rollout, device, reason, detail, now)
    rollout.waves_total = len(waves)
    rollout.current_wave = 0
    rollout.wave_started_at = now
    move(session, rollout, Event.START, now=now, actor=actor.label)
    summary = {
        "waves": [len(w) for w in waves],
        "excluded": dict(Counter(r for _d, r, _x in selection.excluded)),
        "forced": rollout.forced,
        "force_reason": rollout.force_reason,
    }
    audit.record(
        session,
        actor,
        "rollout.start",
        "rollout",
        rollout.id,
        now=now,
        before={"state": "draft"},
        after={"state": rollout.state, **summary},
        request_id=request_id,
    )
    return summary


def _conflicting_rollouts(
    session: Session, selection: Selection, rollout_id: str
) -> dict[str, int]:
    keys = [d.id for d in selection.eligible] + [d.id for d, _r, _x in selection.excluded]
    if not keys:
        return {}
    rows = session.execute(
        select(Execution.rollout_id)
        .join(Rollout, Rollout.id == Execution.rollout_id)
        .where(
            Execution.device_key.in_(keys),
            Execution.status.in_(OPEN_STATUSES),
            Execution.rollout_id != rollout_id,
            Rollout.state.in_([s.value for s in ACTIVE]),
        )
    ).scalars()
    return dict(Counter(rows))


def _exclude(
    session: Session, rollout: Rollout, device: Device, reason: str, detail: str, now: float
) -> None:
    exists = session.execute(
        select(RolloutExclusion.id).where(
            RolloutExclusion.rollout_id == rollout.id, RolloutExclusion.device_key == device.id
        )
    ).first()
    if exists is None:
        session.add(
            RolloutExclusion(
                rollout_id=rollout.id, device_key=device.id, reason=reason, detail=detail, at=now
            )
        )


def operator_action(
    session: Session,
    rollout: Rollout,
    action: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "",
    to_version: str | None = None,
    request_id: str | None = None,
) -> None:
    """``pause``, ``resume``, ``cancel`` or ``rollback`` (to ``to_version`` or the policy's
    version), audited and recorded as rollout events."""
    from fleet_server.rollouts import engine

    before = rollout.state
    if action == "pause":
        move(session, rollout, Event.PAUSE, now=now, actor=actor.label, message=reason)
    elif action == "resume":
        was_halted = rollout.state == "halted"
        move(session, rollout, Event.RESUME, now=now, actor=actor.label, message=reason)
        if was_halted:
            # The operator acknowledges the failures so far; later verdicts judge what
            # happens from now on (the halt and its reason stay in the history).
            rollout.resumed_at = now
        rollout.halt_reason = rollout.halt_stratum = rollout.halt_class = None
    elif action == "cancel":
        move(session, rollout, Event.CANCEL, now=now, actor=actor.label, message=reason)
        engine.cancel_pending(session, rollout, now=now, reason=f"rollout cancelled: {reason}")
    elif action == "rollback":
        policy = parse_policy(rollout.policy)
        version = to_version or policy.on_halt.rollback_to
        if not version:
            raise RolloutError(
                "invalid_policy", "rollback needs a version (to_version or on_halt.rollback_to)"
            )
        bundle = session.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        target = _rollback_bundle(
            session, bundle, version, field="to_version" if to_version else "on_halt.rollback_to"
        )
        move(session, rollout, Event.ROLLBACK, now=now, actor=actor.label, message=reason)
        engine.start_rollback(session, rollout, target, now=now)
    else:
        raise RolloutError("illegal_transition", f"unknown action {action!r}")
    audit.record(
        session,
        actor,
        f"rollout.{action}",
        "rollout",
        rollout.id,
        now=now,
        before={"state": before},
        after={"state": rollout.state, "reason": reason, "to_version": to_version},
        request_id=request_id,
    )


# --- reporting --------------------------------------------------------------------------


def get_rollout(session: Session, rollout_id: str) -> Rollout:
    """The rollout, or ``not_found``."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise RolloutError("not_found", f"no rollout {rollout_id!r}")
    return rollout


def rollout_summary(rollout: Rollout, bundle: Bundle | None = None) -> dict[str, Any]:
    """The rollout's own fields, JSON-ready."""
    return {
        "id": rollout.id,
        "name": rollout.name,
        "bundle": bundle.name if bundle else None,
        "version": bundle.version if bundle else None,
        "selector": rollout.selector,
        "policy": rollout.policy,
        "channel": rollout.channel,
        "state": rollout.state,
        "waves_total": rollout.waves_total,
        "current_wave": rollout.current_wave,
        "wave_started_at": rollout.wave_started_at,
        "bake_started_at": rollout.bake_started_at,
        "halt_reason": rollout.halt_reason,
        "halt_stratum": rollout.halt_stratum,
        "halt_class": rollout.halt_class,
        "forced": rollout.forced,
        "force_reason": rollout.force_reason,
        "created_at": rollout.created_at,
        "created_by": rollout.created_by,
        "started_at": rollout.started_at,
        "finished_at": rollout.finished_at,
    }


def _bucket(execution: Execution) -> str:
    if execution.status == "failed":
        return "timed_out" if execution.failure_class == "timeout" else "failed"
    return execution.status


def rollout_status(session: Session, rollout: Rollout) -> dict[str, Any]:
    """Progress per wave and per stratum: pending, sent, in progress, committed, failed by
    class, timed out, cancelled; plus exclusions by reason."""
    bundle = session.get(Bundle, rollout.bundle_id)
    executions = (
        session.execute(select(Execution).where(Execution.rollout_id == rollout.id))
        .unique()
        .scalars()
        .all()
    )
    policy = parse_policy(rollout.policy)
    waves: dict[int, Counter[str]] = {}
    strata: dict[str, Counter[str]] = {}
    failures: Counter[str] = Counter()
    for ex in executions:
        bucket = _bucket(ex)
        waves.setdefault(ex.wave or 0, Counter())[bucket] += 1
        if ex.status == "failed":
            failures[ex.failure_class or "unknown"] += 1
        device_strata = strata_of(ex.device)
        for name in policy.stratify_by:
            value = device_strata.get(name)
            if value is not None:
                key = f"{name}={value}"
                strata.setdefault(key, Counter())[bucket] += 1
                if ex.status == "failed":
                    strata[key][f"failed:{ex.failure_class or 'unknown'}"] += 1
    exclusions = Counter(
        session.execute(
            select(RolloutExclusion.reason).where(RolloutExclusion.rollout_id == rollout.id)
        ).scalars()
    )
    rollbacks = (
        session.execute(
            select(Execution.status).where(Execution.rollout_id == rollback_id(rollout.id))
        )
        .scalars()
        .all()
    )
    return {
        **rollout_summary(rollout, bundle),
        "waves": [
            {"wave": index, **dict(sorted(counts.items()))}
            for index, counts in sorted(waves.items())
        ],
        "strata": {key: dict(sorted(c.items())) for key, c in sorted(strata.items())},
        "failures_by_class": dict(sorted(failures.items())),
        "excluded_by_reason": dict(sorted(exclusions.items())),
        "rollback": dict(Counter(rollbacks)) if rollbacks else None,
    }


def rollback_id(rollout_id: str) -> str:
    """The ``rollout_id`` carried by the executions that roll a rollout back."""
    return f"{rollout_id}:rollback"


def rollout_events(session: Session, rollout: Rollout) -> list[dict[str, Any]]:
    """The rollout's history, oldest first."""
    rows = session.execute(
        select(RolloutEvent).where(RolloutEvent.rollout_id == rollout.id).order_by(RolloutEvent.id)
    ).scalars()
    return [
        {
            "at": e.at,
            "kind": e.kind,
            "from_state": e.from_state,
            "to_state": e.to_state,
            "wave": e.wave,
            "message": e.message,
            "actor": e.actor,
        }
        for e in rows
    ]


# --- explain -------------------------------------------------------------------------------


def _selector_mismatches(device: Device, selector: DeviceFilter) -> list[str]:
    """Selector fields the device does not satisfy (empty when it matches)."""
    misses = []
    for name in DeviceFilter.__dataclass_fields__:
        value = getattr(selector, name)
        if value is None or value == []:
            continue
        single = DeviceFilter(**{name: value})
        ok = all(_clause_holds(device, clause) for clause in single.clauses())
        if not ok:
            misses.append(name)
    return misses


def _clause_holds(device: Device, clause: Any) -> bool:
    from sqlalchemy.orm import object_session

    session = object_session(device)
    if session is None:
        return True
    return (
        session.execute(select(Device.id).where(Device.id == device.id, clause)).first() is not None
    )


def explain_device(
    session: Session, device: Device, *, now: float, rollout_id: str | None = None
) -> dict[str, Any]:
    """Why the device is (not) updating: for each relevant rollout (the one named, or every
    active one), whether the selector matches, the exclusion and its reason, the wave and
    whether it started, the maintenance window now, quarantine, and the execution's state."""
    from datetime import UTC, datetime

    from fleet_server.rollouts.planner import in_maintenance_window

    if rollout_id:
        rollouts = [get_rollout(session, rollout_id)]
    else:
        rollouts = list(
            session.execute(
                select(Rollout).where(Rollout.state.in_([s.value for s in ACTIVE]))
            ).scalars()
        )
    report: dict[str, Any] = {
        "device_id": device.device_id,
        "presence": device.presence,
        "software_version": device.software_version,
        "status": device.status,
        "rollouts": [],
    }
    for rollout in rollouts:
        bundle = session.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        policy = parse_policy(rollout.policy)
        selector = parse_selector(rollout.selector)
        item: dict[str, Any] = {
            "rollout_id": rollout.id,
            "name": rollout.name,
            "state": rollout.state,
            "version": bundle.version,
        }
        misses = _selector_mismatches(device, selector)
        item["matches_selector"] = not misses
        if misses:
            item["verdict"] = "not targeted: the selector does not match " + ", ".join(
                f"{m}={getattr(selector, m)!r}" for m in misses
            )
            report["rollouts"].append(item)
            continue
        exclusion = session.execute(
            select(RolloutExclusion).where(
                RolloutExclusion.rollout_id == rollout.id, RolloutExclusion.device_key == device.id
            )
        ).scalar_one_or_none()
        execution = (
            session.execute(
                select(Execution)
                .where(Execution.rollout_id == rollout.id, Execution.device_key == device.id)
                .order_by(Execution.created_at.desc())
            )
            .unique()
            .scalars()
            .first()
        )
        in_window = in_maintenance_window(
            policy.maintenance_window,
            datetime.fromtimestamp(now, tz=UTC),
            device.timezone or "UTC",
        )
        item["maintenance_window_open"] = in_window
        if exclusion is not None:
            item["excluded"] = {"reason": exclusion.reason, "detail": exclusion.detail}
            item["verdict"] = f"excluded ({exclusion.reason}): {exclusion.detail}"
        elif execution is None:
            probe = select_devices(
                session, bundle, DeviceFilter(device_id=device.device_id), rollout_id=rollout.id
            )
            if device.status != "active":
                item["verdict"] = f"not eligible: the device is {device.status}"
            elif probe.excluded:
                _d, reason, detail = probe.excluded[0]
                item["verdict"] = f"would be excluded ({reason}): {detail}"
            elif rollout.state == "running":
                item["verdict"] = (
                    "eligible; joins the earliest wave that has not started (or the last "
                    "wave) at the next tick"
                )
            else:
                item["verdict"] = f"eligible; the rollout is {rollout.state}"
        else:
            wave = execution.wave or 0
            started = wave <= rollout.current_wave and rollout.state != "draft"
            item["wave"] = wave
            item["wave_started"] = started
            item["execution"] = {
                "id": execution.id,
                "status": execution.status,
                "phase": execution.phase,
                "failure_class": execution.failure_class,
                "reason": execution.reason,
            }
            if execution.status == "pending":
                if rollout.state != "running":
                    why = f"waiting: the rollout is {rollout.state}"
                    if rollout.halt_reason:
                        why += f" ({rollout.halt_reason})"
                elif not started:
                    why = f"waiting for wave {wave} (wave {rollout.current_wave} is running)"
                elif device.presence != "online":
                    why = "waiting for the device to come online"
                elif not in_window:
                    why = "waiting for its maintenance window (device time zone)"
                else:
                    why = "queued: the install is sent at the next tick (concurrency cap)"
                item["verdict"] = why
            elif execution.status in ("sent", "in_progress"):
                item["verdict"] = f"updating: {execution.phase}"
            elif execution.status == "committed":
                item["verdict"] = f"updated to {bundle.version}"
            elif execution.status == "failed":
                quarantine = (
                    ""
                    if execution.failure_class == "timeout"
                    else f"; quarantined for {bundle.version}"
                )
                item["verdict"] = (
                    f"failed ({execution.failure_class}): {execution.reason}{quarantine}"
                )
            else:
                item["verdict"] = f"cancelled: {execution.reason}"
        back = (
            session.execute(
                select(Execution)
                .where(
                    Execution.rollout_id == rollback_id(rollout.id),
                    Execution.device_key == device.id,
                )
                .order_by(Execution.created_at.desc())
            )
            .unique()
            .scalars()
            .first()
        )
        if back is not None:
            item["rollback"] = {"id": back.id, "status": back.status, "phase": back.phase}
            item["verdict"] += f"; rolled back to {back.bundle.version}: {back.status}"
        report["rollouts"].append(item)
    if not rollouts:
        report["verdict"] = "no active rollout"
    return report
