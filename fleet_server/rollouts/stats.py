"""Statistics behind rollout gates: exact bounds, so small samples cannot decide by luck.

* Failure criteria use the exact (Clopper–Pearson) one-sided binomial bounds on the failure
  rate among devices that executed. A wave *halts* when the lower bound is above the
  allowed rate (strong evidence of a bad release) and *passes* only when the upper bound is
  at or below it (strong evidence of a good one). In between, the engine gathers more data.
* Health gates compare event rates (faults, error reboots) per device-hour between updated
  devices and not-yet-updated devices of the same stratum with the exact conditional
  binomial test for a ratio of Poisson rates, and temperatures with a one-sided Welch test
  on the mean difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


def failure_upper_bound(failures: int, executed: int, confidence: float) -> float:
    """One-sided exact upper confidence bound on a failure rate (1.0 with no data)."""
    _check(failures, executed, confidence)
    if executed == 0 or failures >= executed:
        return 1.0
    return float(stats.beta.ppf(confidence, failures + 1, executed - failures))


def failure_lower_bound(failures: int, executed: int, confidence: float) -> float:
    """One-sided exact lower confidence bound on a failure rate (0.0 with no failures)."""
    _check(failures, executed, confidence)
    if failures == 0:
        return 0.0
    return float(stats.beta.ppf(1.0 - confidence, failures, executed - failures + 1))


def _check(failures: int, executed: int, confidence: float) -> None:
    if executed < 0 or failures < 0 or failures > executed:
        raise ValueError(f"need 0 <= failures ({failures}) <= executed ({executed})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


@dataclass(frozen=True, slots=True)
class RateComparison:
    """Outcome of comparing an event rate of updated devices against controls."""

    worse: bool
    """True when updated devices are credibly more than ``max_ratio`` times worse."""
    updated_rate: float
    control_rate: float
    p_value: float


def rate_ratio_worse(
    updated_events: int,
    updated_hours: float,
    control_events: int,
    control_hours: float,
    *,
    max_ratio: float,
    confidence: float,
) -> RateComparison:
    """Test H0: rate_updated <= max_ratio × rate_control against the one-sided alternative.

    Conditional on the total count, the updated devices' events are binomial with
    ``p0 = r·e1 / (r·e1 + e2)`` under H0 (exact, valid for small counts). No verdict of
    "worse" without exposure on both sides.
    """
    if min(updated_events, control_events) < 0 or min(updated_hours, control_hours) < 0:
        raise ValueError("event counts and exposure hours must be non-negative")
    updated_rate = updated_events / updated_hours if updated_hours > 0 else math.nan
    control_rate = control_events / control_hours if control_hours > 0 else math.nan
    total = updated_events + control_events
    if updated_hours <= 0 or control_hours <= 0 or total == 0:
        return RateComparison(False, updated_rate, control_rate, 1.0)
    weighted = max_ratio * updated_hours
    p0 = weighted / (weighted + control_hours)
    p_value = float(stats.binom.sf(updated_events - 1, total, p0))
    return RateComparison(p_value < 1.0 - confidence, updated_rate, control_rate, p_value)


@dataclass(frozen=True, slots=True)
class MeanComparison:
    """Outcome of comparing a mean (e.g. temperature) of updated devices against controls."""

    worse: bool
    updated_mean: float
    control_mean: float
    lower_bound_delta: float
    """One-sided lower confidence bound of ``updated_mean - control_mean``."""


def mean_shift_worse(
    updated: list[float], control: list[float], *, min_delta: float, confidence: float
) -> MeanComparison:
    """Is the updated group's mean credibly more than ``min_delta`` above the control's?

    One-sided Welch interval on the difference of means; needs at least two values per
    group (otherwise never "worse").
    """
    n1, n2 = len(updated), len(control)
    m1 = sum(updated) / n1 if n1 else math.nan
    m2 = sum(control) / n2 if n2 else math.nan
    if n1 < 2 or n2 < 2:
        return MeanComparison(False, m1, m2, -math.inf)
    v1 = sum((x - m1) ** 2 for x in updated) / (n1 - 1)
    v2 = sum((x - m2) ** 2 for x in control) / (n2 - 1)
    se2 = v1 / n1 + v2 / n2
    delta = m1 - m2
    if se2 == 0:
        lower = delta
    else:
        dof = se2**2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
        lower = delta - float(stats.t.ppf(confidence, dof)) * math.sqrt(se2)
    return MeanComparison(lower > min_delta, m1, m2, lower)
