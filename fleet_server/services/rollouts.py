"""Staged rollouts over the device registry: create (or dry-run), act, report.

A rollout is a bundle, a target selection (a :class:`DeviceFilter` over the registry) and
a :class:`~fleet_server.rollouts.policy.Policy`. Starting it plans every eligible device
into a wave (one pending deployment execution each) and records every device the
selection matched but the rollout leaves out, with the reason. The engine
(:mod:`fleet_server.rollouts.engine`) then moves it forward, tick by tick. Operator
actions (pause, resume, cancel, roll back) live here; the writes they share with the
engine (releasing pending devices, starting a rollback) are the engine store's.

Refusals are the server's one error family (:mod:`fleet_server.errors`), with the codes
``not_found`` (404), ``invalid_policy``, ``invalid_selector``, ``no_devices``,
``invalid_rollback`` (422), ``blocked_version``, ``conflict``, ``illegal_transition``,
``preprod_required`` (409) and ``forbidden`` (403).
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.db.models import Bundle, Device, Execution
from fleet_server.db.rollout_models import Rollout, RolloutEvent, RolloutExclusion
from fleet_server.errors import (
    ConflictError,
    FleetError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
)
from fleet_server.rollouts import store
from fleet_server.rollouts.lifecycle import ACTIVE, RolloutState
from fleet_server.rollouts.lifecycle import RolloutEvent as Event
from fleet_server.rollouts.planner import Candidate, plan_waves
from fleet_server.rollouts.policy import parse_policy, policy_to_dict
from fleet_server.rollouts.view import rollback_id
from fleet_server.services import audit, licences
from fleet_server.services import bundles as catalog
from fleet_server.services.audit import Actor
from fleet_server.services.deployments import OPEN_STATUSES, create_execution
from fleet_server.services.groups import resolve_target
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.rollouts_history import move, record_event
from fleet_server.services.rollouts_selection import (
    STRATA_COLUMNS,
    Selection,
    make_plan,
    parse_selector,
    select_devices,
    selector_to_dict,
    strata_of,
)

__all__ = [
    "create_rollout",
    "dry_run",
    "get_rollout",
    "list_rollouts",
    "make_plan",
    "move",
    "operator_action",
    "parse_selector",
    "rollback_id",
    "rollout_events",
    "rollout_status",
    "rollout_summary",
    "select_devices",
    "start_rollout",
    "strata_of",
]


def _blocked_versions(session: Session) -> dict[str, str]:
    from fleet_server.services.recalls import blocked_versions

    return dict(blocked_versions(session))


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
    parsed = parse_policy(policy)
    filt = resolve_target(session, selector)  # a named group becomes its selector / devices
    blocked = _blocked_versions(session)
    if bundle.version in blocked:
        raise ConflictError(
            "blocked_version",
            f"version {bundle.version} is blocked by recall {blocked[bundle.version]}",
        )
    if parsed.on_halt.action == "rollback":
        try:
            _rollback_bundle(session, bundle, parsed.on_halt.rollback_to or "")
        except InvalidInputError as exc:
            raise InvalidInputError("invalid_policy", exc.message, exc.details) from None
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
    record_event(session, rollout, "created", now=now, actor=actor.label, to_state="draft")
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
        raise InvalidInputError(
            "invalid_rollback",
            f"{field}: no published {bundle.model} bundle of version {version!r}",
            {"field": field},
        )
    if target.release_counter < bundle.release_counter:
        raise InvalidInputError(
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
        raise ConflictError("illegal_transition", f"cannot start a rollout that is {rollout.state}")
    if rollout.channel == "production" and bundle.preprod_completed_at is None:
        if not force_reason:
            raise ConflictError(
                "preprod_required",
                f"{bundle.name} has not completed a pre-production rollout; an admin may force "
                "it with a reason",
            )
        if actor.role not in ("admin", "system"):
            raise ForbiddenError("forbidden", "only an admin may force a production rollout")
        rollout.forced, rollout.force_reason = True, force_reason
    if rollout.channel == "production":
        licences.require_cleared(session, bundle)
    selection = select_devices(
        session, bundle, parse_selector(rollout.selector), rollout_id=rollout.id
    )
    conflicts = _conflicting_rollouts(session, selection, rollout.id)
    if conflicts:
        raise ConflictError(
            "conflict",
            "devices of this rollout are already in active rollout(s) "
            + ", ".join(f"{rid} ({n} devices)" for rid, n in conflicts.items()),
            {"rollouts": conflicts},
        )
    candidates = [Candidate(d.device_id, strata_of(d)) for d in selection.eligible]
    if not candidates:
        raise InvalidInputError(
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
            except FleetError as exc:
                store.exclude(session, rollout, by_id[device_id].id, exc.code, exc.message, now)
    for device, reason, detail in selection.excluded:
        store.exclude(session, rollout, device.id, reason, detail, now)
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
        store.cancel_pending(session, rollout, now=now, reason=f"rollout cancelled: {reason}")
    elif action == "rollback":
        policy = parse_policy(rollout.policy)
        version = to_version or policy.on_halt.rollback_to
        if not version:
            raise InvalidInputError(
                "invalid_policy", "rollback needs a version (to_version or on_halt.rollback_to)"
            )
        bundle = session.get(Bundle, rollout.bundle_id)
        assert bundle is not None
        target = _rollback_bundle(
            session, bundle, version, field="to_version" if to_version else "on_halt.rollback_to"
        )
        move(session, rollout, Event.ROLLBACK, now=now, actor=actor.label, message=reason)
        store.start_rollback(session, rollout, target, now=now)
    else:
        raise ConflictError("illegal_transition", f"unknown action {action!r}")
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
        raise NotFoundError("not_found", f"no rollout {rollout_id!r}")
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


def _bucket(status: str, failure_class: str | None) -> str:
    if status == "failed":
        return "timed_out" if failure_class == "timeout" else "failed"
    return status


def rollout_status(session: Session, rollout: Rollout) -> dict[str, Any]:
    """Progress per wave and per stratum: pending, sent, in progress, committed, failed by
    class, timed out, cancelled; plus exclusions by reason. One grouped query counts the
    executions per (wave, status, failure class, strata) so a rollout of 100,000 devices
    loads a few dozen rows, not every execution."""
    bundle = session.get(Bundle, rollout.bundle_id)
    policy = parse_policy(rollout.policy)
    names = [n for n in dict.fromkeys(policy.stratify_by) if n in STRATA_COLUMNS]
    strata_cols = [getattr(Device, STRATA_COLUMNS[n]) for n in names]
    group = [Execution.wave, Execution.status, Execution.failure_class, *strata_cols]
    rows = session.execute(
        select(*group, func.count())
        .join(Device, Device.id == Execution.device_key)
        .where(Execution.rollout_id == rollout.id)
        .group_by(*group)
    ).all()
    waves: dict[int, Counter[str]] = {}
    strata: dict[str, Counter[str]] = {}
    failures: Counter[str] = Counter()
    for wave, status, failure_class, *rest in rows:
        n = int(rest[-1])
        bucket = _bucket(status, failure_class)
        waves.setdefault(wave or 0, Counter())[bucket] += n
        if status == "failed":
            failures[failure_class or "unknown"] += n
        for name, value in zip(names, rest[:-1], strict=True):
            if value is not None:
                key = f"{name}={value}"
                strata.setdefault(key, Counter())[bucket] += n
                if status == "failed":
                    strata[key][f"failed:{failure_class or 'unknown'}"] += n
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


# --- what the API calls: one function per route, each owning its transaction --------------


def dry_run(
    session: Session, *, bundle: str, selector: dict[str, Any], policy: dict[str, Any]
) -> dict[str, Any]:
    """The waves (devices and their hardware revisions) and the exclusions with reasons that
    starting this rollout now would produce. Nothing is stored."""
    row = catalog.get_bundle(session, bundle)
    parsed = parse_policy(policy)
    plan = make_plan(session, row, resolve_target(session, selector), parsed, seed="dry-run")
    return {"bundle": row.name, "version": row.version, **plan.summary()}


def create_draft(
    session: Session,
    *,
    name: str,
    bundle: str,
    selector: dict[str, Any] | None,
    policy: dict[str, Any] | None,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Create a draft rollout of the bundle named ``bundle`` (committed); its status."""
    rollout = create_rollout(
        session,
        name=name,
        bundle=catalog.get_bundle(session, bundle),
        selector=selector,
        policy=policy,
        actor=actor,
        now=now,
        request_id=request_id,
    )
    session.commit()
    return rollout_status(session, rollout)


def list_rollouts(
    session: Session, params: PageParams, *, state: str | None
) -> Page[dict[str, Any]]:
    """One page of rollouts, newest first, optionally in one ``state``."""
    query = select(Rollout)
    if state:
        query = query.where(Rollout.state == state)
    query = query.order_by(Rollout.created_at.desc(), Rollout.id)
    page = fetch_page(session, query, params, scalars=True)
    return page.map(lambda r: rollout_summary(r, session.get(Bundle, r.bundle_id)))


def status_of(session: Session, rollout_id: str) -> dict[str, Any]:
    """The rollout's status (:func:`rollout_status`), or ``not_found``."""
    return rollout_status(session, get_rollout(session, rollout_id))


def history_of(session: Session, rollout_id: str) -> list[dict[str, Any]]:
    """The rollout's history, oldest first, or ``not_found``."""
    return rollout_events(session, get_rollout(session, rollout_id))


def start(
    session: Session,
    rollout_id: str,
    *,
    actor: Actor,
    now: float,
    force_reason: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Start a draft rollout (:func:`start_rollout`, committed); its status."""
    rollout = get_rollout(session, rollout_id)
    start_rollout(
        session,
        rollout,
        actor=actor,
        now=now,
        force_reason=force_reason,
        request_id=request_id,
    )
    session.commit()
    return rollout_status(session, rollout)


def act(
    session: Session,
    rollout_id: str,
    action: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "",
    to_version: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An operator action (:func:`operator_action`, committed); the rollout's status."""
    rollout = get_rollout(session, rollout_id)
    operator_action(
        session,
        rollout,
        action,
        actor=actor,
        now=now,
        reason=reason,
        to_version=to_version,
        request_id=request_id,
    )
    session.commit()
    return rollout_status(session, rollout)
