"""Deployments: ask one device to install one published bundle and follow it to the end.

An :class:`~fleet_server.db.models.Execution` is the primitive staged rollouts build on.
Its life: ``pending`` (created) -> ``sent`` (the ``Install`` command is on the broker) ->
``in_progress`` (the device reported a step) -> ``committed`` (success, and only then) or
``failed`` (the device reported ``failed``/``rolled_back``, or went silent longer than the
timeout of its current phase) or ``cancelled`` (by an operator before the device started).

A device's reports are applied only to an execution that exists *and* is addressed to
that device; anything else is refused (:class:`DeploymentError` ``unknown_execution``) so
a device can neither invent nor touch another device's deployment. A late report for an
execution that already ended (timed out, cancelled) is recorded in its history but does
not change its status: the rollout that counted it as failed has already moved on.

Functions take the session and ``now`` and never commit, except :func:`dispatch`, which
commits before it publishes so a fast device never reports on an uncommitted execution.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import protocol as p
from fleet_server.db.models import Bundle, Device, Execution, ExecutionEvent
from fleet_server.errors import FleetError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.commands import Publisher, send_command

OPEN_STATUSES = ("pending", "sent", "in_progress")
TERMINAL_STATUSES = ("committed", "failed", "cancelled")
STATUSES = OPEN_STATUSES + TERMINAL_STATUSES

TIMEOUT_KEYS = ("accept_s", "download_s", "install_s", "reboot_s", "commit_s")
DEFAULT_TIMEOUTS: dict[str, float] = {
    "accept_s": 600.0,
    "download_s": 1800.0,
    "install_s": 900.0,
    "reboot_s": 600.0,
    "commit_s": 900.0,
}
"""Per-phase silence limits in seconds (the server's ``[updates]`` section overrides)."""

PHASE_TIMEOUT: dict[str, str] = {
    "sent": "accept_s",
    "idle": "accept_s",
    "downloading": "download_s",
    "verified": "download_s",
    "installing": "install_s",
    "installed": "install_s",
    "rebooting": "reboot_s",
    "trial": "commit_s",
}
"""Which timeout applies while an execution sits in each phase."""

_PROGRESS = ("sent", "idle", "downloading", "verified", "installing", "installed", "rebooting")
_RANK = {name: i for i, name in enumerate((*_PROGRESS, "trial"))}

DEPLOYMENT_STATUS = {
    "not_found": 404,
    "unknown_execution": 404,
    "incompatible": 422,
    "invalid_timeouts": 422,
    "decommissioned": 409,
    "busy": 409,
    "conflict": 409,
    "broker_unavailable": 503,
    "blocked_version": 409,
}
"""HTTP status for each :class:`DeploymentError` code."""


class DeploymentError(ValueError):
    """A deployment request refused for a stated reason; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


SERVER = Actor("deployments", "system")
"""Actor of the ``Install`` commands the service sends (the deployment itself is audited
with the operator or rollout that asked for it)."""


# -- pure decisions ------------------------------------------------------------------------


def check_timeouts(
    given: Mapping[str, Any] | None, defaults: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``defaults`` overlaid with ``given``; unknown keys or non-positive values raise
    ``invalid_timeouts`` naming the key."""
    out = dict(defaults or DEFAULT_TIMEOUTS)
    for key, value in (given or {}).items():
        if key not in TIMEOUT_KEYS:
            raise DeploymentError(
                "invalid_timeouts", f"timeouts.{key}: unknown (known: {', '.join(TIMEOUT_KEYS)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise DeploymentError(
                "invalid_timeouts", f"timeouts.{key}: must be a positive number of seconds"
            )
        out[key] = float(value)
    return out


def compatibility_problem(
    device_model: str | None,
    device_hw: str | None,
    bundle_model: str,
    bundle_hw: list[str],
) -> str | None:
    """Why a device may not take a bundle (None when it may)."""
    if device_model != bundle_model:
        return f"the bundle is for model {bundle_model!r}; the device is {device_model!r}"
    if device_hw not in bundle_hw:
        return (
            f"the bundle supports hardware revisions {', '.join(bundle_hw)}; "
            f"the device is {device_hw!r}"
        )
    return None


def silence_verdict(
    phase: str, phase_at: float, timeouts: Mapping[str, float], now: float
) -> str | None:
    """The timeout reason when an execution in ``phase`` since ``phase_at`` has been
    silent too long at ``now`` (None while it is within its limit)."""
    key = PHASE_TIMEOUT.get(phase)
    if key is None:
        return None
    limit = float(timeouts.get(key, DEFAULT_TIMEOUTS[key]))
    silent = now - phase_at
    if silent <= limit:
        return None
    return f"no report for {silent:.0f} s in phase {phase} (limit {key} = {limit:.0f} s)"


def next_status(state: p.UpdateState) -> str:
    """The execution status a reported update state leads to."""
    if state is p.UpdateState.COMMITTED:
        return "committed"
    if state in (p.UpdateState.FAILED, p.UpdateState.ROLLED_BACK):
        return "failed"
    return "in_progress"


def moves_phase(current: str, reported: str) -> bool:
    """True when a reported intermediate state is news (never step back on a report that
    arrives out of order)."""
    return _RANK.get(reported, 0) >= _RANK.get(current, 0)


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

    Refuses (DeploymentError): a decommissioned device (``decommissioned``), a model or
    hardware revision the bundle does not list (``incompatible``), a device that already
    has an open execution (``busy``), bad timeouts (``invalid_timeouts``).
    """
    if device.status == "decommissioned":
        raise DeploymentError("decommissioned", f"device {device.device_id!r} is decommissioned")
    problem = compatibility_problem(
        device.model, device.hw_revision, bundle.model, list(bundle.hardware_revisions)
    )
    if problem:
        raise DeploymentError(
            "incompatible", f"{bundle.name} cannot go to {device.device_id}: {problem}"
        )
    from fleet_server.services.recalls import blocked_versions

    blocked = blocked_versions(session)
    if bundle.version in blocked:
        raise DeploymentError(
            "blocked_version",
            f"version {bundle.version} is blocked by recall {blocked[bundle.version]}",
        )
    limits = check_timeouts(timeouts)
    # Serialise per device (PostgreSQL row lock; SQLite has one writer anyway).
    session.execute(select(Device.id).where(Device.id == device.id).with_for_update())
    busy = open_execution(session, device)
    if busy is not None:
        raise DeploymentError(
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
        status="pending",
        phase="pending",
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
        raise DeploymentError(
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


def _event(
    session: Session,
    execution: Execution,
    state: str,
    *,
    now: float,
    device_ts: float | None = None,
    failure_class: str | None = None,
    reason: str = "",
    attack: str | None = None,
) -> None:
    session.add(
        ExecutionEvent(
            execution_id=execution.id,
            state=state,
            device_ts=device_ts,
            received_at=now,
            failure_class=failure_class,
            reason=reason,
            attack=attack,
        )
    )


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
    if execution.status != "pending":
        raise DeploymentError(
            "conflict", f"execution {execution.id} is {execution.status}, not pending"
        )
    device, bundle = execution.device, execution.bundle
    execution.status, execution.phase, execution.phase_at = "sent", "sent", now
    execution.sent_at = now
    _event(session, execution, "sent", now=now)
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
            raise DeploymentError(exc.code, exc.message) from None
        fresh = session.get(Execution, execution.id)
        if fresh is not None and fresh.status == "sent" and fresh.phase == "sent":
            fresh.status, fresh.phase, fresh.phase_at, fresh.sent_at = (
                "pending",
                "pending",
                now,
                None,
            )
            _event(session, fresh, "pending", now=now, reason=f"not sent: {exc.message}")
            session.commit()
        raise DeploymentError("broker_unavailable", exc.message) from None
    execution.command_id = record.id
    session.commit()
    return execution


def _already_reported(session: Session, execution_id: str, state: str) -> bool:
    """True when the device already reported ``state`` for this execution."""
    return (
        session.execute(
            select(ExecutionEvent.id)
            .where(ExecutionEvent.execution_id == execution_id, ExecutionEvent.state == state)
            .limit(1)
        ).first()
        is not None
    )


def apply_update_report(
    session: Session, device: Device, event: p.UpdateStateChanged, *, now: float
) -> Execution | None:
    """Apply a device's update report to its execution; None when the report names no
    execution (an update the device started itself, e.g. after ``check_update``).

    Raises DeploymentError ``unknown_execution`` for an id that does not exist or belongs
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
        raise DeploymentError(
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
    _event(
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
    if execution.status in TERMINAL_STATUSES:
        return execution
    status = next_status(event.state)
    if status == "in_progress":
        if execution.phase != state and moves_phase(execution.phase, state):
            execution.phase, execution.phase_at = state, now
        execution.status = "in_progress"
        return execution
    execution.status = status
    execution.phase, execution.phase_at = state, now
    execution.finished_at = now
    if status == "failed":
        execution.failure_class = failure_class
        execution.reason = event.reason
        execution.attack = event.attack
    return execution


def apply_install_rejection(
    session: Session, device_key: int, command_id: str, detail: str, *, now: float
) -> Execution | None:
    """A device refused the ``Install`` command of one of its executions (an agent with
    updates disabled, an expired command...): the execution fails at once instead of
    waiting for its accept timeout. ``failure_class`` stays empty (the device never
    started); the reason carries the device's words. None when no open execution of
    this device sent that command."""
    execution = session.execute(
        select(Execution)
        .where(
            Execution.command_id == command_id,
            Execution.device_key == device_key,
            Execution.status.in_(("pending", "sent")),
        )
        .with_for_update(of=Execution)
    ).scalar_one_or_none()
    if execution is None:
        return None
    reason = f"the device rejected the install command: {detail}"
    execution.status, execution.reason, execution.finished_at = "failed", reason, now
    _event(session, execution, "rejected", now=now, reason=reason)
    return execution


def expire_silent(session: Session, *, now: float) -> list[Execution]:
    """Fail every sent or in-progress execution silent past its phase's timeout
    (``failure_class`` ``timeout``, the reason naming the phase and the silence)."""
    candidates = (
        session.execute(
            select(Execution)
            .where(Execution.status.in_(("sent", "in_progress")))
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
        execution.status, execution.failure_class, execution.reason = "failed", "timeout", reason
        execution.finished_at = now
        _event(session, execution, "failed", now=now, failure_class="timeout", reason=reason)
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
    if execution.status not in ("pending", "sent"):
        raise DeploymentError(
            "conflict",
            f"execution {execution.id} is {execution.status}; only pending or sent "
            "executions can be cancelled",
        )
    before = {"status": execution.status}
    execution.status, execution.finished_at = "cancelled", now
    execution.reason = reason or "cancelled"
    _event(session, execution, "cancelled", now=now, reason=execution.reason)
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
    """The execution, or DeploymentError ``not_found``."""
    execution = session.get(Execution, execution_id)
    if execution is None:
        raise DeploymentError("not_found", f"no execution {execution_id!r}")
    return execution


def execution_events(session: Session, execution: Execution) -> list[dict[str, Any]]:
    """The execution's history, oldest first."""
    rows = session.execute(
        select(ExecutionEvent)
        .where(ExecutionEvent.execution_id == execution.id)
        .order_by(ExecutionEvent.id)
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
