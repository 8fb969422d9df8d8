"""Fault knobs of the simulated hardware: which faults exist and how injections combine.

Fault knobs (:meth:`simulator.hardware.SimulatedHardware.inject`, severity in (0, 1],
active from ``at``):

==================  =================================================================
``fan_degradation`` bearing wear grows by ``severity`` per day (1.0: worn out in a day)
``fan_stall``       the fan loses ``severity`` of its speed at once (1.0: seized)
``thermal_paste``   dried paste: ``R_paste`` × (1 + 5·severity), about +15 °C at full load
``storage_wear``    flash wears an extra ``severity`` × 5 % of its rated life per day
``weak_psu``        supply resistance +0.6·severity Ω (full load: 0.5 under-volts, 0.7 browns out)
``clock_drift``     oscillator error + ``severity`` × 1000 ppm (beyond 0.5 NTP cannot keep up)
``memory_leak``     a process leaks ``severity`` × 10 % of RAM per hour (cleared by a reboot)
``cpu_runaway``     a process spins at ``severity`` × 100 % of total CPU (cleared by a reboot)
==================  =================================================================

These knobs are also the hypotheses that :mod:`simulator.hypotheses` tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

FAULTS: tuple[str, ...] = (
    "fan_degradation",
    "fan_stall",
    "thermal_paste",
    "storage_wear",
    "weak_psu",
    "clock_drift",
    "memory_leak",
    "cpu_runaway",
)
"""Every fault knob, in a stable order (also the hypotheses of the diagnosis)."""

SOFTWARE_FAULTS = frozenset({"memory_leak", "cpu_runaway"})
"""Faults that live in a process and therefore end with a reboot."""


@dataclass(frozen=True, slots=True)
class FaultInjection:
    """A fault knob turned to ``severity`` (0, 1] from time ``at`` (unix seconds)."""

    fault: str
    severity: float
    at: float

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r} (one of {', '.join(FAULTS)})")
        if not (0 < self.severity <= 1):
            raise ValueError(f"{self.fault}: severity must be in (0, 1], got {self.severity!r}")
        if not math.isfinite(self.at):
            raise ValueError(f"{self.fault}: onset must be finite, got {self.at!r}")


def fault_severity(injections: Iterable[FaultInjection], fault: str, now: float) -> float:
    """Largest severity of ``fault`` active at ``now``; 0 when inactive."""
    best = 0.0
    for inj in injections:
        if inj.fault == fault and inj.at <= now and inj.severity > best:
            best = inj.severity
    return best


def active_severities(injections: Iterable[FaultInjection], now: float) -> dict[str, float]:
    """Severity of every fault active at ``now`` (one pass over the injections)."""
    active: dict[str, float] = {}
    for inj in injections:
        if inj.at <= now and inj.severity > active.get(inj.fault, 0.0):
            active[inj.fault] = inj.severity
    return active


def surviving_reboot(injections: Iterable[FaultInjection], now: float) -> list[FaultInjection]:
    """The injections left after a reboot at ``now``: process faults die with the processes."""
    return [i for i in injections if not (i.fault in SOFTWARE_FAULTS and i.at <= now)]
