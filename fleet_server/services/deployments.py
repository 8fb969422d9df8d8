"""Deployments: ask one device to install one published bundle and follow it to the end.

An :class:`~fleet_server.db.models.Execution` is the primitive staged rollouts build on.
Its life: ``pending`` (created) -> ``sent`` (the ``Install`` command is on the broker) ->
``in_progress`` (the device reported a step) -> ``committed`` (success, and only then) or
``failed`` (the device reported ``failed``/``rolled_back``, or went silent longer than the
timeout of its current phase) or ``cancelled`` (by an operator before the device started).

A device's reports are applied only to an execution that exists *and* is addressed to
that device; anything else is refused (:class:`NotFoundError` ``unknown_execution``) so
a device can neither invent nor touch another device's deployment. A late report for an
execution that already ended (timed out, cancelled) is recorded in its history but does
not change its status: the rollout that counted it as failed has already moved on.

The status moves only along :data:`~fleet_server.domain.lifecycles.EXECUTION`; history rows
are written by :mod:`fleet_server.services.history`. Refusals are the server's error family
(:mod:`fleet_server.errors`) with stable codes: ``not_found``/``unknown_execution`` (404),
``incompatible``/``invalid_timeouts`` (422), ``decommissioned``/``busy``/``conflict``/
``blocked_version`` (409), ``broker_unavailable`` (503).

Functions take the session and ``now`` and never commit, except :func:`dispatch`, which
commits before it publishes so a fast device never reports on an uncommitted execution,
and the API entries (:func:`request_update`, :func:`cancel_execution`), which own their
transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.models import Bundle, Device, Execution
from fleet_server.db.models import ExecutionEvent as ExecutionEventRow
from fleet_server.domain.deployment_rules import (
    check_timeouts,
    compatibility_problem,
    moves_phase,
    report_event,
    silence_verdict,
)
from fleet_server.domain.lifecycles import EXECUTION, ExecutionEvent, ExecutionState
from fleet_server.errors import (
    ConflictError,
    FleetError,
    InvalidInputError,
    NotFoundError,
    TransientError,
)
from fleet_server.services import audit, registry
from fleet_server.services import bundles as catalog
from fleet_server.services.audit import Actor
from fleet_server.services.commands import Publisher, send_command
from fleet_server.services.history import execution_event
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.recall_holds import blocked_versions

TERMINAL_STATUSES = tuple(s.value for s in ExecutionState if EXECUTION.is_final(s))
OPEN_STATUSES = tuple(s.value for s in ExecutionState if not EXECUTION.is_final(s))
STATUSES = OPEN_STATUSES + TERMINAL_STATUSES

SERVER = Actor("deployments", "system")
"""Actor of the ``Install`` commands the service sends (the deployment itself is audited
with the operator or rollout that asked for it)."""


# -- service functions ---------------------------------------------------------------------


def open_execution(session: Session, device: Device) -> Execution | None:
    """The device's open (pending, sent or in progress) execution, if any."""
    return session.execute(
        select(Execution).where(
            Execution.device_key == device.id, Execution.status.in_(OPEN_STATUSES)
        )
    ).scalar_one_or_none()


def create_execution(
    session: Session,
    device: Device,
    bundle: Bundle,
    *,
    actor: Actor,
    now: float,
    timeouts: Mapping[str, Any] | None = None,
    rollout_id: str | None = None,
    wave: int | None = None,
    request_id: str | None = None,
    audit_entry: bool = True,
) -> Execution:
    """A pending execution of ``bundle`` on ``device`` (audited; not committed).

    ``audit_entry=False`` is for rollouts, whose start is audited once for every device.

    Refuses: a decommissioned device (``decommissioned``), a model or
    hardware revision the bundle does not list (``incompatible``), a device that already
    has an open execution (``busy``), bad timeouts (``invalid_timeouts``).
    """
    if device.status == "decommissioned":
        raise ConflictError("decommissioned", f"device {device.device_id!r} is decommissioned")
    problem = compatibility_problem(
        device.model, device.hw_revision, bundle.model, list(bundle.hardware_revisions)
    )
    if problem:
        raise InvalidInputError(
            "incompatible", f"{bundle.name} cannot go to {device.device_id}: {problem}"
        )
    blocked = blocked_versions(session)
    if bundle.version in blocked:
        raise ConflictError(
            "blocked_version",
            f"version {bundle.version} is blocked by recall {blocked[bundle.version]}",
        )
    limits = check_timeouts(timeouts)
    # Serialise per device (PostgreSQL row lock; SQLite has one writer anyway).
    session.execute(select(Device.id).where(Device.id == device.id).with_for_update())
    busy = open_execution(session, device)
    if busy is not None:
        raise ConflictError(
            "busy",
            f"device {device.device_id!r} already has open execution {busy.id} "
            f"({busy.status}); wait for it or cancel it",
        )
    execution = Execution(
        id="ex-" + uuid.uuid4().hex[:20],
        device_key=device.id,
        bundle_id=bundle.id,
        rollout_id=rollout_id,
        wave=wave,
        status=EXECUTION.initial.value,
        phase=EXECUTION.initial.value,
        phase_at=now,
        reason="",
        from_version=device.software_version,
        timeouts=limits,
        created_at=now,
        created_by=actor.label,
    )
    execution.device = device
    execution.bundle = bundle
    session.add(execution)
    try:
        session.flush()
    except IntegrityError:  # a concurrent request won the race (unique open index)
        session.rollback()
        raise ConflictError(
            "busy", f"device {device.device_id!r} already has an open execution"
        ) from None
    if not audit_entry:
        return execution
    audit.record(
        session,
        actor,
        "deployment.create",
        "execution",
        execution.id,
        now=now,
        after={
            "device_id": device.device_id,
            "bundle": bundle.name,
            "rollout_id": rollout_id,
            "wave": wave,
            "timeouts": limits,
        },
        request_id=request_id,
    )
    session.flush()
    return execution


def _move(execution: Execution, event: ExecutionEvent) -> str:
    """Move ``execution`` along its lifecycle; returns the new status."""
    execution.status = EXECUTION.apply(execution.status, event).value
    return execution.status


def _not_sent(exc: FleetError) -> FleetError:
    """A refusal of the ``Install`` command as this service's error (same code)."""
    if isinstance(exc, FleetError):
        return exc
    kinds = {"not_found": NotFoundError, "conflict": ConflictError}
    return kinds.get(exc.code, InvalidInputError)(exc.code, exc.message, exc.details)


def dispatch(
    session: Session,
    publisher: Publisher,
    execution: Execution,
    *,
    now: float,
    ttl_s: float,
    actor: Actor = SERVER,
    request_id: str | None = None,
) -> Execution:
    """Send the ``Install`` command for a pending execution; it becomes ``sent``.

    The status is committed as ``sent`` before publishing, so a report that comes back
    at once finds it. A publish failure puts it back to ``pending`` (committed) and raises
    ``broker_unavailable``; calling again retries. The command is audited as ``actor``
    (default: the deployments service itself, e.g. for a rollout's waves).
    """
    if execution.status != ExecutionState.PENDING:
        raise ConflictError(
            "conflict", f"execution {execution.id} is {execution.status}, not pending"
        )
    device, bundle = execution.device, execution.bundle
    execution.phase = _move(execution, ExecutionEvent.SEND)
    execution.phase_at = execution.sent_at = now
    execution_event(session, execution, "sent", now=now)
    try:
        record = send_command(
            session,
            publisher,
            device,
            "install",
            actor=actor,
            now=now,
            ttl_s=ttl_s,
            base_url="",
            request_id=request_id,
            install={
                "target": bundle.name,
                "version": bundle.version,
                "execution_id": execution.id,
            },
        )
    except FleetError as exc:
        session.rollback()
        if exc.code != "broker_unavailable":
            raise _not_sent(exc) from None
        fresh = session.get(Execution, execution.id)
        if fresh is not None and fresh.status == "sent" and fresh.phase == "sent":
            fresh.phase = _move(fresh, ExecutionEvent.SEND_FAILED)
            fresh.phase_at, fresh.sent_at = now, None
            execution_event(session, fresh, "pending", now=now, reason=f"not sent: {exc.message}")
            session.commit()
        raise TransientError("broker_unavailable", exc.message) from None
    execution.command_id = record.id
    session.commit()
    return execution


def _already_reported(session: Session, execution_id: str, state: str) -> bool:
    """True when the device already reported ``state`` for this execution."""
    return (
        session.execute(
            select(ExecutionEventRow.id)
            .where(ExecutionEventRow.execution_id == execution_id, ExecutionEventRow.state == state)
            .limit(1)
        ).first()
        is not None
    )


def apply_update_report(
    session: Session, device: Device, event: p.UpdateStateChanged, *, now: float
) -> Execution | None:
    """Apply a device's update report to its execution; None when the report names no
    execution (an update the device started itself, e.g. after ``check_update``).

    Raises NotFoundError ``unknown_execution`` for an id that does not exist or belongs
    to another device: the report is not applied. A report for an execution that already
    ended is recorded in its history without changing it. A state already reported for
    the execution (a re-report after the agent restarted) changes nothing and is not
    recorded again. ``committed`` records the version as the device's software version;
    ``rolled_back`` restores the version the device ran before the execution.
    """
    if event.execution_id is None:
        return None
    execution = session.execute(
        select(Execution).where(Execution.id == event.execution_id).with_for_update(of=Execution)
    ).scalar_one_or_none()
    if execution is None or execution.device_key != device.id:
        raise NotFoundError(
            "unknown_execution",
            f"device {device.device_id!r} reported on execution {event.execution_id!r}, "
            "which is not one of its executions",
        )
    state = event.state.value
    if _already_reported(session, execution.id, state):
        # The agent re-reports a state it persisted but may not have sent before a
        # kill, from its next boot: (execution_id, state) is applied once.
        return execution
    failure_class = event.failure_class.value if event.failure_class else None
    execution_event(
        session,
        execution,
        state,
        now=now,
        device_ts=event.ts,
        failure_class=failure_class,
        reason=event.reason,
        attack=event.attack,
    )
    if event.state is p.UpdateState.COMMITTED:
        device.software_version = event.version
    elif event.state is p.UpdateState.ROLLED_BACK and execution.from_version:
        # Back on the known-good slot. The Boot event of the run that rolled back
        # (or of the trial boot) named the new slot's version; this report is the
        # device's word that the old one runs again.
        device.software_version = execution.from_version
    if EXECUTION.is_final(execution.status):
        return execution
    previous_phase = execution.phase
    status = _move(execution, report_event(event.state))
    if status == ExecutionState.IN_PROGRESS:
        if previous_phase != state and moves_phase(previous_phase, state):
            execution.phase, execution.phase_at = state, now
        return execution
    execution.phase, execution.phase_at = state, now
    execution.finished_at = now
    if status == ExecutionState.FAILED:
        execution.failure_class = failure_class
        execution.reason = event.reason
        execution.attack = event.attack
    return execution


def apply_install_rejection(
    session: Session,
    device_key: int,
    command_id: str,
    detail: str,
    *,
    now: float,
    accepted: bool = False,
) -> Execution | None:
    """A device refused the ``Install`` command of one of its executions (an agent with
    updates disabled, an expired command...), or ``accepted`` it but never started it (it
    stopped first): the execution fails at once instead of waiting for its accept
    timeout. ``failure_class`` stays empty (the device never started); the reason carries
    the device's words. None when no open execution of this device sent that command."""
    execution = session.execute(
        select(Execution)
        .where(
            Execution.command_id == command_id,
            Execution.device_key == device_key,
            Execution.status.in_(_accepting(ExecutionEvent.REJECT)),
        )
        .with_for_update(of=Execution)
    ).scalar_one_or_none()
    if execution is None:
        return None
    if accepted:
        reason = f"the device accepted the install command but never started it: {detail}"
    else:
        reason = f"the device rejected the install command: {detail}"
    _move(execution, ExecutionEvent.REJECT)
    execution.reason, execution.finished_at = reason, now
    execution_event(session, execution, "rejected", now=now, reason=reason)
    return execution


def _accepting(event: ExecutionEvent) -> tuple[str, ...]:
    """Statuses in which ``event`` is legal (for queries that pick executions to move)."""
    return tuple(s.value for s in ExecutionState if event in EXECUTION.allowed_events(s))


def expire_silent(session: Session, *, now: float) -> list[Execution]:
    """Fail every sent or in-progress execution silent past its phase's timeout
    (``failure_class`` ``timeout``, the reason naming the phase and the silence)."""
    candidates = (
        session.execute(
            select(Execution)
            .where(Execution.status.in_(_accepting(ExecutionEvent.TIME_OUT)))
            .order_by(Execution.phase_at)
            .with_for_update(of=Execution, skip_locked=True)
        )
        .unique()
        .scalars()
        .all()
    )
    expired = []
    for execution in candidates:
        reason = silence_verdict(execution.phase, execution.phase_at, execution.timeouts, now)
        if reason is None:
            continue
        _move(execution, ExecutionEvent.TIME_OUT)
        execution.failure_class, execution.reason = "timeout", reason
        execution.finished_at = now
        execution_event(
            session, execution, "failed", now=now, failure_class="timeout", reason=reason
        )
        expired.append(execution)
    return expired


def cancel(
    session: Session,
    execution: Execution,
    *,
    actor: Actor,
    now: float,
    reason: str,
    request_id: str | None = None,
) -> Execution:
    """Cancel a pending or sent execution (audited). One the device already works on
    cannot be cancelled (``conflict``): it ends by itself, committed, failed or timed out.
    A sent ``Install`` cannot be taken back from the broker; if the device still reports
    on it, the reports are recorded and the status stays ``cancelled``."""
    cancellable = _accepting(ExecutionEvent.CANCEL)
    if execution.status not in cancellable:
        raise ConflictError(
            "conflict",
            f"execution {execution.id} is {execution.status}; only "
            f"{' or '.join(cancellable)} executions can be cancelled",
        )
    before = {"status": execution.status}
    _move(execution, ExecutionEvent.CANCEL)
    execution.finished_at = now
    execution.reason = reason or "cancelled"
    execution_event(session, execution, "cancelled", now=now, reason=execution.reason)
    audit.record(
        session,
        actor,
        "deployment.cancel",
        "execution",
        execution.id,
        now=now,
        before=before,
        after={"status": "cancelled", "reason": execution.reason},
        request_id=request_id,
    )
    return execution


def get_execution(session: Session, execution_id: str) -> Execution:
    """The execution, or NotFoundError ``not_found``."""
    execution = session.get(Execution, execution_id)
    if execution is None:
        raise NotFoundError("not_found", f"no execution {execution_id!r}")
    return execution


def execution_events(session: Session, execution: Execution) -> list[dict[str, Any]]:
    """The execution's history, oldest first."""
    rows = session.execute(
        select(ExecutionEventRow)
        .where(ExecutionEventRow.execution_id == execution.id)
        .order_by(ExecutionEventRow.id)
    ).scalars()
    return [
        {
            "state": e.state,
            "device_ts": e.device_ts,
            "received_at": e.received_at,
            "failure_class": e.failure_class,
            "reason": e.reason,
            "attack": e.attack,
        }
        for e in rows
    ]


def execution_view(execution: Execution) -> dict[str, Any]:
    """An execution as the API shows it."""
    return {
        "id": execution.id,
        "device_id": execution.device.device_id,
        "bundle": execution.bundle.name,
        "version": execution.bundle.version,
        "rollout_id": execution.rollout_id,
        "wave": execution.wave,
        "status": execution.status,
        "phase": execution.phase,
        "phase_at": execution.phase_at,
        "failure_class": execution.failure_class,
        "reason": execution.reason,
        "attack": execution.attack,
        "command_id": execution.command_id,
        "from_version": execution.from_version,
        "timeouts": execution.timeouts,
        "created_at": execution.created_at,
        "sent_at": execution.sent_at,
        "finished_at": execution.finished_at,
        "created_by": execution.created_by,
    }


# -- API entries (each owns its transaction) -----------------------------------------------


def request_update(
    session: Session,
    publisher: Publisher | None,
    device_id: str,
    bundle_name: str,
    *,
    actor: Actor,
    now: float,
    timeouts: Mapping[str, Any] | None,
    default_timeouts: Mapping[str, float],
    request_id: str | None = None,
) -> dict[str, Any]:
    """An operator asks ``device_id`` to install ``bundle_name``: create the execution
    (committed) and send the ``Install`` command. When the command cannot be sent the
    execution is cancelled (committed) and ``broker_unavailable`` (503) raised, so the
    device is not left busy with an execution nobody will send."""
    if publisher is None:
        raise TransientError("broker_unavailable", "this server process has no MQTT publisher")
    device = registry.get_device(session, device_id)
    bundle = catalog.get_bundle(session, bundle_name)
    limits = check_timeouts(timeouts, default_timeouts)
    execution = create_execution(
        session, device, bundle, actor=actor, now=now, timeouts=limits, request_id=request_id
    )
    session.commit()
    try:
        dispatch(
            session,
            publisher,
            execution,
            now=now,
            ttl_s=limits["accept_s"],
            actor=actor,
            request_id=request_id,
        )
    except TransientError as exc:
        cancel(
            session,
            execution,
            actor=actor,
            now=now,
            reason=f"the install command could not be sent: {exc.message}",
            request_id=request_id,
        )
        session.commit()
        raise
    return execution_view(execution)


def executions_query(
    *,
    device_id: str | None = None,
    bundle: str | None = None,
    rollout_id: str | None = None,
    status: str | None = None,
) -> Select[tuple[Execution]]:
    """Executions matching every given filter, newest first (for a paged list)."""
    where = []
    if device_id is not None:
        where.append(
            Execution.device_key.in_(select(Device.id).where(Device.device_id == device_id))
        )
    if bundle is not None:
        where.append(Execution.bundle_id.in_(select(Bundle.id).where(Bundle.name == bundle)))
    if rollout_id is not None:
        where.append(Execution.rollout_id == rollout_id)
    if status is not None:
        where.append(Execution.status == status)
    return select(Execution).where(*where).order_by(Execution.created_at.desc(), Execution.id)


def execution_detail(session: Session, execution_id: str) -> dict[str, Any]:
    """One execution as the API shows it, with its history oldest first."""
    execution = get_execution(session, execution_id)
    return {**execution_view(execution), "events": execution_events(session, execution)}


def cancel_execution(
    session: Session,
    execution_id: str,
    *,
    actor: Actor,
    now: float,
    reason: str,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An operator cancels a pending or sent execution (committed); see :func:`cancel`."""
    execution = cancel(
        session,
        get_execution(session, execution_id),
        actor=actor,
        now=now,
        reason=reason,
        request_id=request_id,
    )
    session.commit()
    return execution_view(execution)


def list_executions(
    session: Session,
    params: PageParams,
    *,
    device_id: str | None = None,
    bundle: str | None = None,
    rollout_id: str | None = None,
    status: str | None = None,
) -> Page[dict[str, Any]]:
    """One page of executions matching every given filter, newest first, shaped."""
    query = executions_query(
        device_id=device_id, bundle=bundle, rollout_id=rollout_id, status=status
    )
    return fetch_page(session, query, params, scalars=True).map(execution_view)
