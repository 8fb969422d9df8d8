"""What rollout judgements look at and what they answer: plain, immutable values.

:class:`Outcome` is where one device of the rollout stands, :class:`StratumHealth` the
health evidence of one stratum during a bake, :class:`Verdict` a judgement and why. The
criteria (:mod:`fleet_server.rollouts.criteria`) read the first two and return the third.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

OutcomeStatus = Literal["pending", "deferred", "in_progress", "committed", "failed", "cancelled"]
"""``deferred``: not sent yet and not sendable now (the device is offline); it neither
counts nor holds the wave back."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one device of the rollout stands."""

    device_id: str
    wave: int
    status: OutcomeStatus
    failure_class: str | None = None
    strata: Mapping[str, str] = field(default_factory=dict)


class VerdictKind(StrEnum):
    """What the engine should do with the current wave."""

    WAIT = "wait"  # devices still pending or in progress
    PASS = "pass"  # credibly good: bake, then start the next wave
    EXTEND = "extend"  # complete but not yet credibly good: add devices to the sample
    HALT = "halt"  # credibly bad: apply the policy's halt action


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision and why; ``stratum`` is ``"field=value"`` or ``"fleet"``."""

    kind: VerdictKind
    reason: str = ""
    stratum: str | None = None
    failure_class: str | None = None


@dataclass(frozen=True, slots=True)
class StratumHealth:
    """Health evidence of one stratum during a bake: updated devices vs controls."""

    stratum: str
    updated_faults: int = 0
    control_faults: int = 0
    updated_reboots: int = 0
    control_reboots: int = 0
    updated_hours: float = 0.0
    control_hours: float = 0.0
    updated_temps: Sequence[float] = ()
    control_temps: Sequence[float] = ()
