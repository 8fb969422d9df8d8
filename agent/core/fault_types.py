"""The contract between fault rules and the fault engine.

A rule watches samples and, when its debounced raise or clear condition is met, returns a
:class:`FaultChange`. Rules are plain objects driven by the caller's clock (``ts`` of
each sample), so the daemon, the simulator and ``fleet-sim replay`` run them identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from protocol import Sample, Severity


@dataclass(frozen=True, slots=True)
class FaultChange:
    """A fault was raised (``raised=True``) or cleared at time ``ts``."""

    code: str
    raised: bool
    severity: Severity
    ts: float
    value: float | None = None
    threshold: float | None = None
    message: str = ""
    drivers: tuple[tuple[str, float], ...] = ()
    """For a raise by a multivariate rule: the signals that drove it and their shares."""


class FaultRule(Protocol):
    """What every fault rule (fixed-threshold or adaptive) provides."""

    code: str
    """Stable fault code, e.g. ``over_temperature``; one open alarm per device and code."""
    severity: Severity

    @property
    def active(self) -> bool:
        """True while the fault is raised."""
        ...

    def update(self, sample: Sample) -> FaultChange | None:
        """Feed one sample (in time order); return a change when the rule raises or clears."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable, bounded state, so a restart resumes without re-learning."""
        ...

    def restore(self, state: dict[str, Any]) -> bool | None:
        """Resume from a :meth:`snapshot`; unknown or corrupt state is ignored.

        Return False when the state was refused (the rule starts fresh), so the agent can
        say so; True or None when it was taken.
        """
        ...
