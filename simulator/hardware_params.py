"""Constants and surroundings of the simulated hardware: what it is made of, where it runs.

:class:`HardwareParams` (physical constants of a hardware revision), :class:`LoadProfile`
(the workload's CPU and memory demand by local time), :class:`AmbientProfile` (the
region's temperature through the day), :class:`Environment` (what surrounds the device
during one step) and :func:`device_rng` (a device's own seeded random generator). The
physics that uses them is described in :mod:`simulator.hardware`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

DAY_S = 86_400.0
HOUR_S = 3_600.0


def device_rng(seed: int, device_id: str, *streams: str) -> np.random.Generator:
    """A generator seeded from the scenario seed and the device id (plus stream names).

    The seed is a hash of the id, not a position in the fleet, so a device draws the
    same numbers whatever the order or size of the fleet; separate ``streams`` (e.g.
    ``"hardware"``, ``"latent", "fan_degradation"``) keep independent uses independent.
    """
    key = "\x1f".join((device_id, *streams)).encode()
    digest = hashlib.sha256(key).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, *words]))


_SIGNED_PARAMS = frozenset({"clock_ppm"})


@dataclass(frozen=True, slots=True)
class HardwareParams:
    """Physical constants of one hardware revision (defaults: a Pi 4 in a case with a fan)."""

    cores: int = 4
    p_idle_w: float = 2.7
    p_max_w: float = 6.4
    p_periph_w: float = 1.0
    c_th_j_per_k: float = 60.0
    r_paste_c_per_w: float = 0.5
    r_sink_c_per_w: float = 8.5
    fan_nominal_rpm: float = 5000.0
    fan_cooling_gain: float = 2.4
    throttle_c: float = 80.0
    soft_limit_c: float = 60.0
    min_freq_factor: float = 0.33
    temp_noise_c: float = 0.3
    psu_nominal_v: float = 5.1
    psu_resistance_ohm: float = 0.05
    psu_noise_v: float = 0.02
    undervoltage_v: float = 4.63
    brownout_v: float = 4.35
    emmc_endurance_tbw: float = 96.0
    io_error_rate_eol_per_s: float = 1.0 / 60.0
    io_error_hazard_beta: float = 30.0
    disk_capacity_gb: float = 32.0
    clock_ppm: float = 0.0
    ntp_max_slew_ppm: float = 500.0
    has_rtc: bool = False
    fake_hwclock_save_s: float = HOUR_S
    mem_total_mb: float = 4096.0
    swap_ratio: float = 0.25

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if not math.isfinite(value) or (value < 0 and f.name not in _SIGNED_PARAMS):
                raise ValueError(f"{f.name}: must be a finite number >= 0, got {value!r}")
        if self.cores < 1:
            raise ValueError(f"cores: must be >= 1, got {self.cores}")
        if self.p_max_w < self.p_idle_w:
            raise ValueError("p_max_w: must be >= p_idle_w")
        if not 0 < self.min_freq_factor <= 1:
            raise ValueError("min_freq_factor: must be in (0, 1]")
        if self.c_th_j_per_k <= 0 or self.emmc_endurance_tbw <= 0 or self.mem_total_mb <= 0:
            raise ValueError("c_th_j_per_k, emmc_endurance_tbw and mem_total_mb must be > 0")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names accepted as overrides (scenario ``hardware`` tables)."""
        return frozenset(f.name for f in fields(cls))

    def thermal_resistance(self, fan_rpm: float, paste_factor: float = 1.0) -> float:
        """Junction-to-ambient thermal resistance (°C/W) at ``fan_rpm``."""
        airflow = fan_rpm / self.fan_nominal_rpm if self.fan_nominal_rpm > 0 else 0.0
        return self.r_paste_c_per_w * paste_factor + self.r_sink_c_per_w / (
            1.0 + self.fan_cooling_gain * airflow
        )

    def soc_power(self, cpu_frac: float, freq_factor: float = 1.0) -> float:
        """SoC power (W) at a CPU utilisation fraction and frequency factor."""
        return self.p_idle_w + (self.p_max_w - self.p_idle_w) * cpu_frac * freq_factor


ProfileKind = Literal["idle", "diurnal", "bursty", "batch"]
PROFILE_KINDS: tuple[str, ...] = ("idle", "diurnal", "bursty", "batch")


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """CPU and memory demand of the device's workload, by local time of day.

    ``base_cpu_pct`` always; ``diurnal`` adds up to ``amplitude_cpu_pct`` peaking at
    ``peak_hour``; ``bursty`` adds ``burst_cpu_pct`` for bursts arriving ``bursts_per_hour``
    and lasting ``burst_s`` on average; ``batch`` adds ``job_cpu_pct`` every day from
    ``job_hour`` for ``job_hours``. ``write_bps`` is what the workload writes to flash.
    """

    kind: ProfileKind = "idle"
    base_cpu_pct: float = 5.0
    amplitude_cpu_pct: float = 30.0
    peak_hour: float = 20.0
    bursts_per_hour: float = 2.0
    burst_s: float = 300.0
    burst_cpu_pct: float = 70.0
    job_hour: float = 2.0
    job_hours: float = 1.0
    job_cpu_pct: float = 90.0
    mem_pct: float = 30.0
    mem_amplitude_pct: float = 10.0
    write_bps: float = 20_000.0

    def __post_init__(self) -> None:
        if self.kind not in PROFILE_KINDS:
            raise ValueError(f"kind: unknown load profile {self.kind!r} (one of {PROFILE_KINDS})")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "kind" and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{f.name}: must be a finite number >= 0, got {value!r}")

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names accepted in scenario ``load`` tables."""
        return frozenset(f.name for f in fields(cls))

    def daily_shape(self, local_s: float) -> float:
        """Diurnal weight in [0, 1]: 1 at ``peak_hour``, 0 twelve hours away."""
        hour = (local_s % DAY_S) / HOUR_S
        return 0.5 + 0.5 * math.cos(2 * math.pi * (hour - self.peak_hour) / 24.0)

    def in_job(self, local_s: float) -> bool:
        """True while the daily batch job runs."""
        hour = (local_s % DAY_S) / HOUR_S
        return (hour - self.job_hour) % 24.0 < self.job_hours


@dataclass(frozen=True, slots=True)
class AmbientProfile:
    """Ambient temperature: ``mean_c`` ± ``amplitude_c``, warmest at ``peak_hour`` local."""

    mean_c: float = 25.0
    amplitude_c: float = 0.0
    peak_hour: float = 15.0

    def at(self, t: float, utc_offset_s: float = 0.0) -> float:
        """Ambient temperature (°C) at unix time ``t`` in a zone ``utc_offset_s`` from UTC."""
        hour = ((t + utc_offset_s) % DAY_S) / HOUR_S
        return self.mean_c + self.amplitude_c * math.cos(2 * math.pi * (hour - self.peak_hour) / 24)


@dataclass(frozen=True, slots=True)
class Environment:
    """What surrounds the device during one step.

    ``cpu_demand_pct`` / ``mem_demand_pct`` replace the load profile's demand (replaying a
    field device's observed workload); faults still add on top.
    """

    ambient_c: float = 25.0
    ntp_reachable: bool = True
    powered: bool = True
    utc_offset_s: float = 0.0
    cpu_demand_pct: float | None = None
    mem_demand_pct: float | None = None
