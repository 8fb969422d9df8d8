"""Judging a wave: halt, pass, wait, or extend — from outcomes, never from timers.

Failure rates are computed over devices that *executed* (committed, failed, or timed out):
a device that is offline and never started does not dilute the rate, and one that went
silent past its deadline has already been counted as a ``timeout`` failure by the engine.
Each failure criterion is judged fleet-wide *and* per stratum (every value of every
``stratify_by`` field), so a release that breaks only one hardware revision halts on that
revision's evidence and the reason names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from fleet_server.rollouts.policy import FailureCriterion, Policy
from fleet_server.rollouts.stats import (
    failure_lower_bound,
    failure_upper_bound,
    mean_shift_worse,
    rate_ratio_worse,
)

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


def _groups(outcomes: Sequence[Outcome], policy: Policy) -> dict[str, list[Outcome]]:
    """Every stratum (``field=value``) first, then the whole fleet, so a halt names the
    most specific group whose evidence is enough."""
    groups: dict[str, list[Outcome]] = {}
    for name in policy.stratify_by:
        for outcome in outcomes:
            value = outcome.strata.get(name)
            if value is not None:
                groups.setdefault(f"{name}={value}", []).append(outcome)
    groups["fleet"] = list(outcomes)
    return groups


def _counts(outcomes: Sequence[Outcome], criterion: FailureCriterion) -> tuple[int, int]:
    executed = failures = 0
    for outcome in outcomes:
        if outcome.status == "committed":
            executed += 1
        elif outcome.status == "failed":
            executed += 1
            if criterion.failure_class in ("any", outcome.failure_class):
                failures += 1
    return failures, executed


def judge_wave(outcomes: Sequence[Outcome], wave: int, policy: Policy) -> Verdict:
    """Judge wave ``wave`` using the evidence of every wave up to and including it."""
    seen = [o for o in outcomes if o.wave <= wave]
    groups = _groups(seen, policy)
    # Every group is its own test: correct the halt level for their number so a good
    # release is rarely halted by chance in one small batch. (The criteria are nested in
    # "any", so they are not counted again.)
    halt_confidence = 1.0 - (1.0 - policy.confidence) / max(len(groups), 1)
    for name, members in groups.items():
        for criterion in policy.failure_criteria:
            failures, executed = _counts(members, criterion)
            if criterion.max_failures is not None and failures > criterion.max_failures:
                return Verdict(
                    VerdictKind.HALT,
                    (
                        f"{criterion.failure_class} failures in {name}: {failures} of "
                        f"{executed} executed; at most {criterion.max_failures} allowed"
                    ),
                    stratum=name,
                    failure_class=criterion.failure_class,
                )
            lower = failure_lower_bound(failures, executed, halt_confidence)
            if lower > criterion.max_rate:
                return Verdict(
                    VerdictKind.HALT,
                    (
                        f"{criterion.failure_class} failures in {name}: {failures} of "
                        f"{executed} executed; the rate is above {criterion.max_rate:.1%} with "
                        f"{halt_confidence:.2%} confidence (lower bound {lower:.1%})"
                    ),
                    stratum=name,
                    failure_class=criterion.failure_class,
                )
    current = [o for o in seen if o.wave == wave]
    if any(o.status in ("pending", "in_progress") for o in current):
        return Verdict(VerdictKind.WAIT, "devices of this wave are still updating")
    for criterion in policy.failure_criteria:
        if not criterion.pass_gate:
            continue
        failures, executed = _counts(seen, criterion)
        upper = failure_upper_bound(failures, executed, policy.confidence)
        if executed < policy.min_sample or upper > criterion.max_rate:
            return Verdict(
                VerdictKind.EXTEND,
                (
                    f"{criterion.failure_class}: {failures} of {executed} executed; not yet "
                    f"credibly at or below {criterion.max_rate:.1%} (upper bound {upper:.1%}, "
                    f"minimum sample {policy.min_sample})"
                ),
                failure_class=criterion.failure_class,
            )
    return Verdict(VerdictKind.PASS, f"wave {wave} passed its failure criteria")


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


MIN_EVENTS = 3
"""A rate gate needs at least this many events on the updated devices to halt: a couple
of faults cannot halt a rollout, however few the device-hours."""


def judge_health(evidence: Sequence[StratumHealth], policy: Policy) -> Verdict | None:
    """Apply the policy's health gates; a :class:`Verdict` to halt, or None when healthy.

    Every stratum and gate is a separate test, so each runs at a Bonferroni-corrected level
    (the policy's error rate divided by strata x gates). The engine looks again at every
    tick of a bake; that repetition is not corrected for (no alpha spending), which
    ``MIN_EVENTS`` and the corrected level keep in check.
    """
    tests = max(len(evidence) * len(policy.health_gates), 1)
    confidence = 1.0 - (1.0 - policy.confidence) / tests
    for item in evidence:
        for gate in policy.health_gates:
            if gate.metric == "temp_c":
                temps = mean_shift_worse(
                    list(item.updated_temps),
                    list(item.control_temps),
                    min_delta=gate.min_delta_c,
                    confidence=confidence,
                )
                if temps.worse:
                    return Verdict(
                        VerdictKind.HALT,
                        (
                            f"health gate temp_c in {item.stratum}: updated devices run "
                            f"{temps.updated_mean - temps.control_mean:.1f} °C hotter than "
                            f"not-yet-updated ones (more than {gate.min_delta_c:g} °C)"
                        ),
                        stratum=item.stratum,
                        failure_class="health",
                    )
                continue
            if gate.metric == "fault_rate":
                counts = (item.updated_faults, item.control_faults)
            else:
                counts = (item.updated_reboots, item.control_reboots)
            if counts[0] < MIN_EVENTS:
                continue
            result = rate_ratio_worse(
                counts[0],
                item.updated_hours,
                counts[1],
                item.control_hours,
                max_ratio=gate.max_ratio,
                confidence=confidence,
            )
            if result.worse:
                return Verdict(
                    VerdictKind.HALT,
                    (
                        f"health gate {gate.metric} in {item.stratum}: "
                        f"{result.updated_rate:.3g}/device-hour on updated devices vs "
                        f"{result.control_rate:.3g} on not-yet-updated ones (more than "
                        f"{gate.max_ratio:g}x, p={result.p_value:.2g})"
                    ),
                    stratum=item.stratum,
                    failure_class="health",
                )
    return None
