"""Service level objectives, pure: error budgets, burn rates and the multi-window,
multi-burn-rate alerts of the SRE workbook.

A component's service is recorded per minute as ``(good, total)`` events. An SLO (say
99.9 % over 30 days) allows an error budget of ``1 - objective`` of the events; the burn
rate over a window is the window's error ratio divided by that allowance (1 = the budget
lasts exactly the SLO window). An alert fires when the burn rate is at or above the rule's
factor over both its long and its short window: the long window gives significance, the
short one makes the alert stop soon after the problem does.

========  =======  ===========  ============  ==========================================
severity  factor   long window  short window  budget spent when it fires
========  =======  ===========  ============  ==========================================
page      14.4     1 h          5 min         2 % of a 30-day budget in one hour
page      6        6 h          30 min        5 % in six hours
ticket    1        3 days       6 h           10 % in three days
========  =======  ===========  ============  ==========================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MINUTE = 60
DAY_MIN = 1440


@dataclass(frozen=True)
class Slo:
    """``objective`` of ``component``'s events are good over ``window_days``."""

    component: str
    objective: float = 0.999
    window_days: float = 30.0
    description: str = ""

    @property
    def budget(self) -> float:
        """The allowed error ratio."""
        return 1.0 - self.objective


@dataclass(frozen=True)
class BurnRule:
    """Alert at ``severity`` when the burn rate is >= ``factor`` over both windows."""

    severity: str
    factor: float
    long_min: int
    short_min: int


BURN_RULES = (
    BurnRule("page", 14.4, 60, 5),
    BurnRule("page", 6.0, 360, 30),
    BurnRule("ticket", 1.0, 3 * DAY_MIN, 360),
)


class Series:
    """Per-minute ``(good, total)`` counts of one component, queried by trailing window."""

    def __init__(self, minutes: Mapping[int, tuple[int, int]]) -> None:
        keys = np.array(sorted(minutes), dtype=np.int64)
        self.minutes = keys
        self.good = np.array([minutes[int(k)][0] for k in keys], dtype=float)
        self.total = np.array([minutes[int(k)][1] for k in keys], dtype=float)
        self._cg = np.concatenate([[0.0], np.cumsum(self.good)])
        self._ct = np.concatenate([[0.0], np.cumsum(self.total)])

    def window(self, end_minute: int, length: int) -> tuple[float, float]:
        """``(good, total)`` over the ``length`` minutes ending before ``end_minute``."""
        lo = int(np.searchsorted(self.minutes, end_minute - length, side="left"))
        hi = int(np.searchsorted(self.minutes, end_minute, side="left"))
        return self._cg[hi] - self._cg[lo], self._ct[hi] - self._ct[lo]


def burn_rate(series: Series, slo: Slo, end_minute: int, length: int) -> float:
    """Error ratio over the window / the budget (0 when nothing happened)."""
    good, total = series.window(end_minute, length)
    if total <= 0:
        return 0.0
    return ((total - good) / total) / slo.budget


@dataclass(frozen=True)
class Alert:
    """A fired rule with the burn rates that fired it."""

    severity: str
    factor: float
    long_min: int
    short_min: int
    long_burn: float
    short_burn: float


@dataclass(frozen=True)
class SloStatus:
    """Where an SLO stands at ``now``: the SLI and budget over its window, burn rates,
    fired alerts, and when the budget runs out at the last hour's rate."""

    slo: Slo
    sli: float | None
    budget_remaining: float
    burn_1h: float
    alerts: tuple[Alert, ...]
    exhausted_at: float | None

    def view(self) -> dict[str, object]:
        """The status as the API shows it (epoch seconds)."""
        return {
            "component": self.slo.component,
            "objective": self.slo.objective,
            "window_days": self.slo.window_days,
            "sli": None if self.sli is None else round(self.sli, 6),
            "budget_remaining": round(self.budget_remaining, 4),
            "burn_rate_1h": round(self.burn_1h, 3),
            "alerts": [
                {
                    "severity": a.severity,
                    "factor": a.factor,
                    "long_min": a.long_min,
                    "short_min": a.short_min,
                    "long_burn": round(a.long_burn, 2),
                    "short_burn": round(a.short_burn, 2),
                }
                for a in self.alerts
            ],
            "budget_exhausted_at": self.exhausted_at,
        }


def evaluate_slo(
    slo: Slo, series: Series, now: float, rules: Sequence[BurnRule] = BURN_RULES
) -> SloStatus:
    """The SLO's status at ``now`` (only whole minutes before ``now`` count)."""
    end = int(now // MINUTE)
    window = int(slo.window_days * DAY_MIN)
    good, total = series.window(end, window)
    sli = good / total if total else None
    spent = ((total - good) / total / slo.budget) if total else 0.0
    remaining = 1.0 - spent
    alerts = []
    for rule in rules:
        long_b = burn_rate(series, slo, end, rule.long_min)
        short_b = burn_rate(series, slo, end, rule.short_min)
        if long_b >= rule.factor and short_b >= rule.factor:
            alerts.append(
                Alert(rule.severity, rule.factor, rule.long_min, rule.short_min, long_b, short_b)
            )
    burn_1h = burn_rate(series, slo, end, 60)
    exhausted = None
    if burn_1h > 0:
        # At burn rate b the whole budget lasts window / b; what is left lasts that share.
        exhausted = now if remaining <= 0 else now + remaining * window * MINUTE / burn_1h
    return SloStatus(slo, sli, remaining, burn_1h, tuple(alerts), exhausted)


def daily_availability(series: Series, end_minute: int, days: int = 90) -> list[float | None]:
    """Good share per UTC day for the ``days`` days ending with the day of
    ``end_minute`` (None for a day with no events), oldest first."""
    last_day = end_minute // DAY_MIN
    out: list[float | None] = []
    for d in range(last_day - days + 1, last_day + 1):
        good, total = series.window((d + 1) * DAY_MIN, DAY_MIN)
        out.append(round(good / total, 6) if total else None)
    return out
