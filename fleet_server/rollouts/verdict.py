"""Judging a wave: halt, pass, wait, or extend — from outcomes, never from timers.

Failure rates are computed over devices that *executed* (committed, failed, or timed out):
a device that is offline and never started does not dilute the rate, and one that went
silent past its deadline has already been counted as a ``timeout`` failure by the engine.
Each failure criterion is judged fleet-wide *and* per stratum (every value of every
``stratify_by`` field), so a release that breaks only one hardware revision halts on that
revision's evidence and the reason names it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleet_server.rollouts.criteria import HALT_CRITERIA, HEALTH_GATES, failure_counts
from fleet_server.rollouts.evidence import (
    Outcome,
    OutcomeStatus,
    StratumHealth,
    Verdict,
    VerdictKind,
)
from fleet_server.rollouts.policy import Policy
from fleet_server.rollouts.stats import failure_upper_bound

__all__ = [
    "Outcome",
    "OutcomeStatus",
    "StratumHealth",
    "Verdict",
    "VerdictKind",
    "judge_health",
    "judge_wave",
]


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
            for rule in HALT_CRITERIA:
                verdict = rule.check(name, members, criterion, halt_confidence)
                if verdict is not None:
                    return verdict
    current = [o for o in seen if o.wave == wave]
    if any(o.status in ("pending", "in_progress") for o in current):
        return Verdict(VerdictKind.WAIT, "devices of this wave are still updating")
    for criterion in policy.failure_criteria:
        if not criterion.pass_gate:
            continue
        failures, executed = failure_counts(seen, criterion.failure_class)
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
            verdict = HEALTH_GATES[gate.metric].check(item, gate, confidence)
            if verdict is not None:
                return verdict
    return None
