"""State of the simulated hardware: everything that evolves, and the boots it went through.

A copy of :class:`HardwareState` is a complete checkpoint of a device; the ``*_NOW`` bits
and :data:`OCCURRED_SHIFT` are the layout of its ``throttled`` field (``vcgencmd
get_throttled``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol import RebootReason

# get_throttled bits
UNDERVOLTAGE_NOW = 1 << 0
FREQ_CAPPED_NOW = 1 << 1
THROTTLED_NOW = 1 << 2
SOFT_LIMIT_NOW = 1 << 3
OCCURRED_SHIFT = 16


@dataclass(frozen=True, slots=True)
class BootRecord:
    """The device (re)booted at true time ``t`` for ``reason``."""

    t: float
    reason: RebootReason


@dataclass(slots=True)
class HardwareState:
    """Everything that evolves; a copy of it is a complete checkpoint of the device."""

    t: float = 0.0
    on: bool = True
    temp_c: float = 40.0
    cpu_pct: float = 0.0
    mem_pct: float = 0.0
    swap_pct: float = 0.0
    load_1m: float = 0.0
    freq_factor: float = 1.0
    voltage_v: float = 5.1
    undervoltage: bool = False
    undervoltage_prob: float = 0.0
    throttled: int = 0
    fan_wear: float = 0.0
    fan_speed_loss: float = 0.0
    fan_stalled: bool = False
    fan_rpm: float = 0.0
    emmc_life_used_pct: float = 1.0
    disk_pct: float = 20.0
    disk_io_errors: float = 0.0
    uptime_s: float = 0.0
    clock_offset_s: float = 0.0
    clock_needs_step: bool = True
    clock_synced: bool = False
    last_clock_save_t: float = 0.0
    leak_pct: float = 0.0
    burst_until: float = -math.inf
    boots: int = 1
    last_boot_reason: RebootReason = RebootReason.POWER_ON
