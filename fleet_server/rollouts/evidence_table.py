"""The halt criteria of a rollout beside their current evidence, for people to read.

Pure: from the policy and the rollout's status counts (executions per bucket and failures
per class, as :func:`fleet_server.services.rollouts.rollout_status` reports them) to one
row per criterion with the observed failures, the executed devices, the confidence
bounds the engine judges by, and whether the criterion trips now.
"""

from __future__ import annotations

from typing import Any

from fleet_server.rollouts.policy import Policy
from fleet_server.rollouts.stats import failure_lower_bound, failure_upper_bound

EXECUTED = ("committed", "failed", "timed_out")


def criteria_evidence(policy: Policy, status: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per failure criterion over the whole rollout so far."""
    executed = sum(int(w.get(k, 0)) for w in status.get("waves", []) for k in EXECUTED)
    by_class: dict[str, int] = status.get("failures_by_class", {})
    rows = []
    for c in policy.failure_criteria:
        failures = (
            sum(by_class.values()) if c.failure_class == "any" else by_class.get(c.failure_class, 0)
        )
        lower = upper = None
        if executed:
            lower = failure_lower_bound(failures, executed, policy.confidence)
            upper = failure_upper_bound(failures, executed, policy.confidence)
        over_count = c.max_failures is not None and failures > c.max_failures
        rows.append(
            {
                "failure_class": c.failure_class,
                "max_rate": c.max_rate,
                "max_failures": c.max_failures,
                "pass_gate": c.pass_gate,
                "failures": failures,
                "executed": executed,
                "observed_rate": failures / executed if executed else None,
                "lower_bound": lower,
                "upper_bound": upper,
                "trips": bool(over_count or (lower is not None and lower > c.max_rate)),
            }
        )
    return rows
