"""Pure rules of deployments: per-phase timeouts, compatibility, report mapping.

No database and no clock: the deployments service passes what it read and applies what
these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import protocol as p
from fleet_server.domain.lifecycles import EXECUTION, ExecutionEvent, ExecutionState
from fleet_server.errors import InvalidInputError

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


def check_timeouts(
    given: Mapping[str, Any] | None, defaults: Mapping[str, float] | None = None
) -> dict[str, float]:
    """``defaults`` overlaid with ``given``; unknown keys or non-positive values raise
    ``invalid_timeouts`` naming the key."""
    out = dict(defaults or DEFAULT_TIMEOUTS)
    for key, value in (given or {}).items():
        if key not in TIMEOUT_KEYS:
            raise InvalidInputError(
                "invalid_timeouts", f"timeouts.{key}: unknown (known: {', '.join(TIMEOUT_KEYS)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise InvalidInputError(
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


def report_event(state: p.UpdateState) -> ExecutionEvent:
    """The lifecycle event a device's reported update state is."""
    if state is p.UpdateState.COMMITTED:
        return ExecutionEvent.COMMIT
    if state in (p.UpdateState.FAILED, p.UpdateState.ROLLED_BACK):
        return ExecutionEvent.FAIL
    return ExecutionEvent.PROGRESS


def next_status(state: p.UpdateState) -> str:
    """The execution status a reported update state leads to (from an open execution)."""
    return EXECUTION.apply(ExecutionState.SENT, report_event(state)).value


def moves_phase(current: str, reported: str) -> bool:
    """True when a reported intermediate state is news (never step back on a report that
    arrives out of order)."""
    return _RANK.get(reported, 0) >= _RANK.get(current, 0)
