"""Which failures quarantine a version on a device.

Only a version that failed *on the device* is quarantined: a failed install, a failed
boot into the new slot or a failed health check. A refusal (an expired command, updates
disabled, busy), a download or verification error and a timeout are transient: the
device may take the same version later. An operator clears the rest with
``fleetctl devices unquarantine`` (failures finished before that no longer count).
"""

from __future__ import annotations

QUARANTINING = ("install", "boot", "health")
"""``failure_class`` values that quarantine the version on the device."""


def quarantines(
    failure_class: str | None, finished_at: float | None, cleared_at: float | None
) -> bool:
    """True when an execution that failed with ``failure_class`` (finished at
    ``finished_at``) keeps its version quarantined on the device."""
    if failure_class not in QUARANTINING:
        return False
    return cleared_at is None or (finished_at is not None and finished_at > cleared_at)
