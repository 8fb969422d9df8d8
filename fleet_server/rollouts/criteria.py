"""Halt criteria and health gates as strategy objects, each found through a registry.

A halt criterion looks at the outcomes of one group (a stratum or the whole fleet) under
one of the policy's failure criteria and answers a :class:`Verdict` to halt, or None. A
health gate compares updated devices with not-yet-updated ones of one stratum during a
bake. :func:`~fleet_server.rollouts.verdict.judge_wave` and
:func:`~fleet_server.rollouts.verdict.judge_health` run every registered strategy, in
registry order.

A new halt criterion is one class with a ``check`` method and one line in
:data:`HALT_CRITERIA`; a new health gate is one class and one line in
:data:`HEALTH_GATES` (its key is the ``metric`` a policy's ``health_gates`` names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from fleet_server.rollouts.evidence import Outcome, StratumHealth, Verdict, VerdictKind
from fleet_server.rollouts.stats import failure_lower_bound, mean_shift_worse, rate_ratio_worse

if TYPE_CHECKING:
    from fleet_server.rollouts.policy import FailureCriterion, HealthGate


def failure_counts(outcomes: Sequence[Outcome], failure_class: str) -> tuple[int, int]:
    """``(failures of failure_class, executed)`` among ``outcomes`` (``"any"`` counts all)."""
    executed = failures = 0
    for outcome in outcomes:
        if outcome.status == "committed":
            executed += 1
        elif outcome.status == "failed":
            executed += 1
            if failure_class in ("any", outcome.failure_class):
                failures += 1
    return failures, executed


class HaltCriterion(Protocol):
    """Decides from one group's outcomes whether the rollout must halt."""

    def check(
        self,
        group: str,
        outcomes: Sequence[Outcome],
        criterion: FailureCriterion,
        confidence: float,
    ) -> Verdict | None:
        """A halt verdict naming ``group``, or None when this criterion sees no problem."""
        ...


class TooManyFailures:
    """Halt when failures of the class exceed the criterion's ``max_failures`` count."""

    def check(
        self,
        group: str,
        outcomes: Sequence[Outcome],
        criterion: FailureCriterion,
        confidence: float,
    ) -> Verdict | None:
        """Halt on a count above ``max_failures`` (when the criterion sets one)."""
        del confidence
        if criterion.max_failures is None:
            return None
        failures, executed = failure_counts(outcomes, criterion.failure_class)
        if failures <= criterion.max_failures:
            return None
        return Verdict(
            VerdictKind.HALT,
            (
                f"{criterion.failure_class} failures in {group}: {failures} of "
                f"{executed} executed; at most {criterion.max_failures} allowed"
            ),
            stratum=group,
            failure_class=criterion.failure_class,
        )


class RateCrediblyAbove:
    """Halt when the failure rate is credibly above ``max_rate`` (its exact lower bound)."""

    def check(
        self,
        group: str,
        outcomes: Sequence[Outcome],
        criterion: FailureCriterion,
        confidence: float,
    ) -> Verdict | None:
        """Halt when the lower confidence bound of the rate exceeds ``max_rate``."""
        failures, executed = failure_counts(outcomes, criterion.failure_class)
        lower = failure_lower_bound(failures, executed, confidence)
        if lower <= criterion.max_rate:
            return None
        return Verdict(
            VerdictKind.HALT,
            (
                f"{criterion.failure_class} failures in {group}: {failures} of "
                f"{executed} executed; the rate is above {criterion.max_rate:.1%} with "
                f"{confidence:.2%} confidence (lower bound {lower:.1%})"
            ),
            stratum=group,
            failure_class=criterion.failure_class,
        )


HALT_CRITERIA: tuple[HaltCriterion, ...] = (
    TooManyFailures(),
    RateCrediblyAbove(),
)
"""Every halt criterion, tried in this order for each group and failure criterion."""


class HealthCheck(Protocol):
    """Compares updated devices with controls of one stratum under one policy gate."""

    def check(self, item: StratumHealth, gate: HealthGate, confidence: float) -> Verdict | None:
        """A halt verdict naming the stratum, or None when the gate holds."""
        ...


MIN_EVENTS = 3
"""A rate gate needs at least this many events on the updated devices to halt: a couple
of faults cannot halt a rollout, however few the device-hours."""


class EventRateGate:
    """Events per device-hour (faults, error reboots) credibly ``max_ratio`` times worse."""

    def __init__(self, metric: str, updated: str, control: str) -> None:
        self.metric, self.updated, self.control = metric, updated, control

    def check(self, item: StratumHealth, gate: HealthGate, confidence: float) -> Verdict | None:
        """Exact conditional test of the rate ratio; needs ``MIN_EVENTS`` updated events."""
        updated, control = getattr(item, self.updated), getattr(item, self.control)
        if updated < MIN_EVENTS:
            return None
        result = rate_ratio_worse(
            updated,
            item.updated_hours,
            control,
            item.control_hours,
            max_ratio=gate.max_ratio,
            confidence=confidence,
        )
        if not result.worse:
            return None
        return Verdict(
            VerdictKind.HALT,
            (
                f"health gate {self.metric} in {item.stratum}: "
                f"{result.updated_rate:.3g}/device-hour on updated devices vs "
                f"{result.control_rate:.3g} on not-yet-updated ones (more than "
                f"{gate.max_ratio:g}x, p={result.p_value:.2g})"
            ),
            stratum=item.stratum,
            failure_class="health",
        )


class TemperatureGate:
    """Updated devices credibly hotter than controls by more than ``min_delta_c``."""

    def check(self, item: StratumHealth, gate: HealthGate, confidence: float) -> Verdict | None:
        """One-sided Welch bound on the mean temperature difference."""
        temps = mean_shift_worse(
            list(item.updated_temps),
            list(item.control_temps),
            min_delta=gate.min_delta_c,
            confidence=confidence,
        )
        if not temps.worse:
            return None
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


HEALTH_GATES: dict[str, HealthCheck] = {
    "fault_rate": EventRateGate("fault_rate", "updated_faults", "control_faults"),
    "reboot_rate": EventRateGate("reboot_rate", "updated_reboots", "control_reboots"),
    "temp_c": TemperatureGate(),
}
"""Every health gate by the ``metric`` name a policy uses."""
