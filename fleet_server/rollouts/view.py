"""An immutable snapshot of one rollout, everything :func:`~fleet_server.rollouts.decide.decide`
may look at: the rollout's own fields, its executions by wave and state (with each device's
presence, strata and time zone), rollback attempts, devices that joined the target since
the last tick, and the fault and reboot times that health gates compare.

The store (:mod:`fleet_server.rollouts.store`) builds it from the database; tests build
it by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleet_server.rollouts.policy import Policy

OPEN = ("pending", "sent", "in_progress")
"""Execution states that still hold a device."""
IN_FLIGHT = ("sent", "in_progress")
"""Execution states of a device working on its install."""


def rollback_id(rollout_id: str) -> str:
    """The ``rollout_id`` carried by the executions that roll a rollout back."""
    return f"{rollout_id}:rollback"


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What a decision needs of one device."""

    key: int
    device_id: str
    online: bool = True
    timezone: str = "UTC"
    software_version: str | None = None
    strata: Mapping[str, str] = field(default_factory=dict)
    temp_c: float | None = None
    vitals_ts: float | None = None


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """One device's forward execution in the rollout (``wave`` 0 when none was set)."""

    device: DeviceView
    wave: int
    status: str
    failure_class: str | None = None
    created_at: float = 0.0
    finished_at: float | None = None
    id: str = ""


@dataclass(frozen=True, slots=True)
class RollbackAttempt:
    """One execution sending a device back to the known-good release."""

    device_key: int
    status: str
    failure_class: str | None = None
    online: bool = True


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A device the target matched but the rollout leaves out, and why."""

    device_key: int
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class RolloutView:
    """One rollout as the engine sees it at one tick."""

    id: str
    state: str
    policy: Policy
    seed: str = ""
    current_wave: int = 0
    waves_total: int = 1
    wave_started_at: float | None = None
    bake_started_at: float | None = None
    resumed_at: float | None = None
    channel: str = "production"
    preprod_done: bool = True
    release_version: str = ""
    rollback_version: str | None = None
    """The version a rolled-back rollout sends devices back to."""
    rollback_target: str | None = None
    """The rollback version (the policy's ``on_halt.rollback_to`` while running, else
    ``rollback_version``) when a bundle of it exists; None otherwise."""
    executions: tuple[ExecutionView, ...] = ()
    rollbacks: tuple[RollbackAttempt, ...] = ()
    joiners: tuple[DeviceView, ...] = ()
    """Eligible devices that joined the target and have no execution in the rollout yet."""
    excluded: tuple[Exclusion, ...] = ()
    """Newly matched devices the rollout leaves out."""
    faults: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    """Alarm times per device key since the bake started (loaded during a bake only)."""
    reboots: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    """Error-reboot times per device key since the bake started (during a bake only)."""
