"""The device's update flow as data: a transition table, a restart table, and the checks.

The flow (DESIGN.md, "Signed updates")::

    idle -> downloading -> verified -> installing -> installed -> rebooting -> trial
         -> committed                                     (health check passed)
         -> rolled_back                                   (boot or health failed)
    any active state -> failed                            (download/verify/install error)

The daemon persists an :class:`UpdateRecord` atomically *before* acting on each new state,
so whenever the process dies, :func:`on_restart` decides from the record alone what to do
next. Every state counts how often the agent restarted in it; past ``max_attempts`` the
flow gives up in a terminal state instead of looping forever (a device killed in the same
state every time ends failed or rolled back, never in between).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from protocol import FailureClass, RejectReason, UpdateState

U = UpdateState

ACTIVE_STATES = frozenset(
    {U.DOWNLOADING, U.VERIFIED, U.INSTALLING, U.INSTALLED, U.REBOOTING, U.TRIAL}
)
TERMINAL_STATES = frozenset({U.COMMITTED, U.FAILED, U.ROLLED_BACK})


class UpdateEvent(StrEnum):
    """What can happen during an update."""

    START = "start"  # an install was requested and accepted
    DOWNLOADED = "downloaded"  # target fetched and verified by TUF, checks passed
    INSTALL = "install"  # writing the inactive slot begins
    INSTALLED = "installed"  # inactive slot written and checked
    REBOOT = "reboot"  # switching to the new slot for a trial boot
    BOOTED = "booted"  # running from the new slot, trial begins
    HEALTHY = "healthy"  # health check passed within its deadline
    FAIL = "fail"  # download, verification or install failed (old slot untouched)
    ROLLBACK = "rollback"  # boot or health failed: back on the old slot
    RESET = "reset"  # a terminal outcome was reported; ready for the next update


E = UpdateEvent

TRANSITIONS: dict[tuple[UpdateState, UpdateEvent], UpdateState] = {
    (U.IDLE, E.START): U.DOWNLOADING,
    (U.DOWNLOADING, E.DOWNLOADED): U.VERIFIED,
    (U.DOWNLOADING, E.FAIL): U.FAILED,
    (U.VERIFIED, E.INSTALL): U.INSTALLING,
    (U.VERIFIED, E.FAIL): U.FAILED,
    (U.INSTALLING, E.INSTALLED): U.INSTALLED,
    (U.INSTALLING, E.FAIL): U.FAILED,
    (U.INSTALLED, E.REBOOT): U.REBOOTING,
    (U.INSTALLED, E.FAIL): U.FAILED,
    (U.REBOOTING, E.BOOTED): U.TRIAL,
    (U.REBOOTING, E.ROLLBACK): U.ROLLED_BACK,
    # The trial boot was lost before its verdict (one-shot trial slots boot the old slot
    # after a power cut): switch to the new slot again.
    (U.TRIAL, E.REBOOT): U.REBOOTING,
    (U.TRIAL, E.HEALTHY): U.COMMITTED,
    (U.TRIAL, E.ROLLBACK): U.ROLLED_BACK,
    # Committed, but the device came back on the old slot before the slots committed
    # (one-shot trial slots after a power cut) and the new one never booted again.
    (U.COMMITTED, E.ROLLBACK): U.ROLLED_BACK,
    (U.COMMITTED, E.RESET): U.IDLE,
    (U.FAILED, E.RESET): U.IDLE,
    (U.ROLLED_BACK, E.RESET): U.IDLE,
    # A new request may replace a finished one directly.
    (U.COMMITTED, E.START): U.DOWNLOADING,
    (U.FAILED, E.START): U.DOWNLOADING,
    (U.ROLLED_BACK, E.START): U.DOWNLOADING,
}


class IllegalUpdateTransitionError(ValueError):
    """An event the current update state does not allow (a bug or a replayed command)."""


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """Everything persisted about the current (or last) update, as plain data."""

    state: UpdateState = U.IDLE
    execution_id: str | None = None
    target: str | None = None
    version: str | None = None
    from_version: str | None = None
    release_counter: int | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    entered_at: float = 0.0
    trial_started_at: float | None = None
    failure_class: FailureClass | None = None
    reason: str = ""
    attack: str | None = None
    reported: bool = False
    """True once the terminal outcome was handed to the outbound queue."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the atomic state file."""
        return {
            "state": self.state.value,
            "execution_id": self.execution_id,
            "target": self.target,
            "version": self.version,
            "from_version": self.from_version,
            "release_counter": self.release_counter,
            "attempts": dict(self.attempts),
            "entered_at": self.entered_at,
            "trial_started_at": self.trial_started_at,
            "failure_class": self.failure_class.value if self.failure_class else None,
            "reason": self.reason,
            "attack": self.attack,
            "reported": self.reported,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdateRecord:
        """Rebuild from :meth:`to_dict`; raises ``ValueError`` on a corrupt record."""
        try:
            return cls(
                state=UpdateState(data["state"]),
                execution_id=data.get("execution_id"),
                target=data.get("target"),
                version=data.get("version"),
                from_version=data.get("from_version"),
                release_counter=data.get("release_counter"),
                attempts={str(k): int(v) for k, v in (data.get("attempts") or {}).items()},
                entered_at=float(data.get("entered_at") or 0.0),
                trial_started_at=data.get("trial_started_at"),
                failure_class=(
                    FailureClass(data["failure_class"]) if data.get("failure_class") else None
                ),
                reason=str(data.get("reason") or ""),
                attack=data.get("attack"),
                reported=bool(data.get("reported")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupt update record: {exc}") from None


def apply(record: UpdateRecord, event: UpdateEvent, now: float, **changes: Any) -> UpdateRecord:
    """The record after ``event`` at ``now`` (with optional field ``changes``).

    Entering a state resets nothing but ``entered_at``; attempt counters survive so the
    restart table can bound retries. ``START`` begins a fresh record.
    """
    try:
        new_state = TRANSITIONS[(record.state, event)]
    except KeyError:
        raise IllegalUpdateTransitionError(
            f"update event {event.value!r} is not allowed in state {record.state.value!r}"
        ) from None
    base = UpdateRecord() if event is E.START else record
    updated = replace(base, state=new_state, entered_at=now, **changes)
    if new_state is U.TRIAL and updated.trial_started_at is None:
        updated = replace(updated, trial_started_at=now)
    if new_state in TERMINAL_STATES:
        updated = replace(updated, reported=False)
    return updated


class RestartAction(StrEnum):
    """What the daemon does after finding a record at start-up."""

    NONE = "none"
    RESUME_DOWNLOAD = "resume_download"
    REVERIFY = "reverify"  # check the downloaded file again, then install
    REINSTALL = "reinstall"  # rewrite the inactive slot from the verified file
    SWITCH = "switch"  # (re)do the atomic switch to the new slot
    CONTINUE_TRIAL = "continue_trial"  # running the new slot: health check until deadline
    ROLLBACK = "rollback"  # go back to the old slot
    REPORT = "report"  # a terminal outcome not yet reported


RESTART_TABLE: dict[UpdateState, RestartAction] = {
    U.IDLE: RestartAction.NONE,
    U.DOWNLOADING: RestartAction.RESUME_DOWNLOAD,
    U.VERIFIED: RestartAction.REVERIFY,
    U.INSTALLING: RestartAction.REINSTALL,
    U.INSTALLED: RestartAction.SWITCH,
    U.REBOOTING: RestartAction.SWITCH,
    U.TRIAL: RestartAction.CONTINUE_TRIAL,
    U.COMMITTED: RestartAction.REPORT,
    U.FAILED: RestartAction.REPORT,
    U.ROLLED_BACK: RestartAction.REPORT,
}
"""The action for each state when the agent (re)starts and finds it persisted."""

_GIVE_UP_CLASS: dict[UpdateState, FailureClass] = {
    U.DOWNLOADING: FailureClass.DOWNLOAD,
    U.VERIFIED: FailureClass.VERIFICATION,
    U.INSTALLING: FailureClass.INSTALL,
    U.INSTALLED: FailureClass.INSTALL,
    U.REBOOTING: FailureClass.BOOT,
    U.TRIAL: FailureClass.BOOT,
}


def on_restart(
    record: UpdateRecord, now: float, *, running_version: str | None, max_attempts: int = 3
) -> tuple[UpdateRecord, RestartAction]:
    """Decide what to do with a persisted record when the agent starts.

    ``running_version`` is the version of the slot the device actually booted (from the
    slot back-end), which settles whether a switch took effect. Each restart in an active
    state counts an attempt; beyond ``max_attempts`` the update ends ``failed`` (old slot
    untouched) or ``rolled_back`` (the new slot was tried), with a reason naming the state.
    """
    state = record.state
    if state not in ACTIVE_STATES:
        action = RESTART_TABLE[state] if not record.reported else RestartAction.NONE
        return record, action

    attempts = dict(record.attempts)
    attempts[state.value] = attempts.get(state.value, 0) + 1
    record = replace(record, attempts=attempts)
    if attempts[state.value] > max_attempts:
        reason = f"agent restarted {attempts[state.value] - 1} times while {state.value}; giving up"
        failure = _GIVE_UP_CLASS[state]
        if state in (U.REBOOTING, U.TRIAL):
            return (
                apply(record, E.ROLLBACK, now, failure_class=failure, reason=reason),
                RestartAction.ROLLBACK,
            )
        return apply(record, E.FAIL, now, failure_class=failure, reason=reason), RestartAction.NONE

    if state is U.REBOOTING and running_version is not None and running_version == record.version:
        return apply(record, E.BOOTED, now), RestartAction.CONTINUE_TRIAL
    if state is U.TRIAL and running_version is not None and running_version != record.version:
        # The boot loader fell back to the old slot: the new version did not boot, or the
        # power went during its trial (a one-shot trial cannot tell): try it again while
        # attempts are left, then roll back.
        if attempts[state.value] < max_attempts:
            return apply(record, E.REBOOT, now), RestartAction.SWITCH
        reason = (
            f"device came back on {running_version} instead of {record.version} "
            f"{attempts[state.value]} times"
        )
        return (
            apply(record, E.ROLLBACK, now, failure_class=FailureClass.BOOT, reason=reason),
            RestartAction.REPORT,
        )
    return record, RESTART_TABLE[state]


@dataclass(frozen=True, slots=True)
class TargetInfo:
    """What the device knows of a target before installing it (from TUF custom metadata)."""

    version: str
    hardware_revisions: tuple[str, ...]
    release_counter: int
    min_agent_version: str = "0"
    model: str | None = None


class CheckFailure(StrEnum):
    """Why a target may not be installed on this device (each is a security refusal)."""

    WRONG_HARDWARE = "wrong_hardware"
    WRONG_MODEL = "wrong_model"
    DOWNGRADE = "downgrade"
    AGENT_TOO_OLD = "agent_too_old"
    QUARANTINED = "quarantined"


def check_target(
    target: TargetInfo,
    *,
    hardware_revision: str,
    model: str | None,
    highest_release_counter: int,
    agent_version: str,
    quarantined: frozenset[str] | set[str] = frozenset(),
) -> tuple[CheckFailure, str] | None:
    """Refuse targets that are not for this hardware, go back in release order, need a
    newer agent, or already failed here. Returns ``(kind, explanation)`` or None."""
    if model is not None and target.model is not None and target.model != model:
        return CheckFailure.WRONG_MODEL, f"target is for model {target.model}, this is {model}"
    if hardware_revision not in target.hardware_revisions:
        return (
            CheckFailure.WRONG_HARDWARE,
            f"target supports {', '.join(target.hardware_revisions) or 'no revision'}; "
            f"this device is {hardware_revision}",
        )
    if target.release_counter < highest_release_counter:
        return (
            CheckFailure.DOWNGRADE,
            f"release counter {target.release_counter} is below the installed "
            f"{highest_release_counter}",
        )
    if version_tuple(agent_version) < version_tuple(target.min_agent_version):
        return (
            CheckFailure.AGENT_TOO_OLD,
            f"target needs agent {target.min_agent_version}, this agent is {agent_version}",
        )
    if target.version in quarantined:
        return CheckFailure.QUARANTINED, f"version {target.version} failed here before"
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """Numeric release tuple of a semver-like string (pre-release/build parts ignored)."""
    core = version.split("+", 1)[0].split("-", 1)[0]
    parts: list[int] = []
    for piece in core.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def install_refusal(
    *,
    enabled: bool,
    busy: bool,
    state: UpdateState,
    version: str,
    quarantined: frozenset[str] | set[str],
) -> tuple[RejectReason, str] | None:
    """Why an ``Install`` command must be rejected now, or None to accept it.

    Only an idle device (no update in an active state, no update work running) takes a
    new install; a version that already failed on this device is never retried.
    """
    if not enabled:
        return RejectReason.UNKNOWN_COMMAND, "updates are not enabled on this agent"
    if version in quarantined:  # permanent, so it is the answer even while busy
        return (
            RejectReason.NOT_PERMITTED,
            f"version {version} failed on this device before and is quarantined",
        )
    if busy or state in ACTIVE_STATES:
        return RejectReason.BUSY, f"an update is in progress (state {state.value})"
    return None


SECURITY_CHECKS = frozenset(
    {CheckFailure.WRONG_HARDWARE, CheckFailure.WRONG_MODEL, CheckFailure.DOWNGRADE}
)
"""Check failures that are refusals of an attack (reported with ``attack`` set)."""
