"""Simulated Raspberry-Pi-class hardware: thermal, fan, storage, power supply, clock, load.

One :class:`SimulatedHardware` per device holds explicit state (:class:`HardwareState`),
is advanced by :meth:`SimulatedHardware.step` and read by :meth:`SimulatedHardware.sample`,
which returns the same :class:`protocol.Sample` the real agent's psutil adapter produces.
Everything is pure: the caller owns the clock (``step(dt_s, env)``) and the randomness
(a seeded ``numpy.random.Generator``, see :func:`simulator.hardware_params.device_rng`).
Without a generator the model runs in *expectation mode*: no noise, and every random
process (I/O errors, bursts, stalls) contributes its expected value, which is what the
diagnosis fits against.

Physics (simple but sound; every constant is a field of
:class:`~simulator.hardware_params.HardwareParams`):

* **Thermal.** First order: ``dT/dt = (P·R_th − (T − T_amb)) / tau`` with ``tau = C·R_th``,
  integrated exactly over each step (``T → T_ss + (T − T_ss)·exp(−dt/tau)``), so any step
  length is stable. ``P = P_idle + (P_max − P_idle)·cpu·f`` where ``f`` is the CPU
  frequency factor. ``R_th = R_paste + R_sink / (1 + gain·rpm/rpm_nominal)``: the fan lowers
  the heatsink resistance, dried thermal paste raises ``R_paste``.
* **Throttling.** Above ``throttle_c`` (80 °C) the firmware lowers ``f`` (down to
  ``min_freq_factor``) just enough to hold the temperature at the limit; under-voltage
  caps ``f`` at ``min_freq_factor`` too. ``soft_limit_c`` (60 °C) only sets flags.
* **Throttled bits** (``vcgencmd get_throttled``): bit 0 under-voltage now, bit 1 ARM
  frequency capped (soft limit or throttled), bit 2 throttled, bit 3 soft temperature limit;
  bits 16-19 are the same conditions "has occurred since boot".
* **Fan.** Always-on fan at ``fan_nominal_rpm`` (0 = fanless). Bearing wear ``w`` in [0, 1]
  grows with the ``fan_degradation`` fault; rpm = nominal·(1 − 0.8·w), jitter grows with
  ``w``, and a worn bearing stalls (hazard ``w⁴`` per hour; certain at ``w = 1``).
* **Storage.** eMMC life used grows with the bytes written over the rated endurance
  (TBW); I/O errors arrive as a Poisson process whose rate is a hazard function of wear,
  ``λ(u) = λ_eol·exp(β·(u − 1))`` (``u`` = life used as a fraction): negligible on new
  flash, about one a minute at rated end of life, rising fast beyond.
* **Power supply.** A source ``V_nom`` behind an internal resistance ``R``: the board draws
  ``P`` so ``V = (V_nom + sqrt(V_nom² − 4·R·P)) / 2``, plus noise (``P`` is the power the
  workload demands: the dip the board sees before the firmware reacts; ``supply_v`` in
  the sample's ``custom``). Below ``undervoltage_v`` (4.63 V, the Pi's threshold) the
  under-voltage bit is set; below ``brownout_v`` (or when the supply collapses) the board
  resets (reboot reason ``BROWN_OUT``).
* **Clock.** The oscillator is off by ``clock_ppm``. With NTP reachable the clock is
  disciplined, but a slew can correct at most ``ntp_max_slew_ppm`` (500 ppm, like ntpd and
  chrony); the first sync after a boot steps it. Synced means NTP reachable and ``|offset| <
  0.5 s``. Without an RTC (Pi 4 and older) a power cut or crash brings the clock back to the
  last ``fake-hwclock`` save.
* **Load.** :class:`LoadProfile` gives CPU and memory demand by local time: ``idle``,
  ``diurnal`` (peak at ``peak_hour``), ``bursty`` (Poisson bursts) and ``batch`` (a daily
  job). ``load_1m`` follows ``cores·cpu`` with the kernel's one-minute time constant.
  Memory above RAM goes to swap; when both are full the device reboots (``OUT_OF_MEMORY``).

Fault knobs and how injections combine: :mod:`simulator.hardware_faults`; constants,
load, ambient and environment: :mod:`simulator.hardware_params`; the state:
:mod:`simulator.hardware_state`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from protocol import RebootReason, Sample
from simulator.hardware_faults import (
    FaultInjection,
    active_severities,
    fault_severity,
    surviving_reboot,
)
from simulator.hardware_params import DAY_S, HOUR_S, Environment, HardwareParams, LoadProfile
from simulator.hardware_state import (
    FREQ_CAPPED_NOW,
    OCCURRED_SHIFT,
    SOFT_LIMIT_NOW,
    THROTTLED_NOW,
    UNDERVOLTAGE_NOW,
    BootRecord,
    HardwareState,
)

NTP_TAU_S = 1000.0
"""Time constant of the NTP discipline loop pulling the offset to zero."""


_NO_FAULTS: dict[str, float] = {}


class SimulatedHardware:
    """One device's hardware; advance with :meth:`step`, read with :meth:`sample`.

    ``rng`` None selects expectation mode (noise-free, deterministic without a seed).
    Stepping is deterministic for a given generator state and sequence of ``dt_s``.
    """

    def __init__(
        self,
        params: HardwareParams | None = None,
        profile: LoadProfile | None = None,
        rng: np.random.Generator | None = None,
        *,
        start_time: float = 0.0,
        state: HardwareState | None = None,
    ) -> None:
        self.params = params or HardwareParams()
        self.profile = profile or LoadProfile()
        self.rng = rng
        self.state = state if state is not None else HardwareState(t=start_time)
        if state is None:
            self.state.voltage_v = self.params.psu_nominal_v
            self.state.fan_rpm = self.params.fan_nominal_rpm
            self.state.last_clock_save_t = start_time
        self.injections: list[FaultInjection] = []
        self._boots: list[BootRecord] = []
        self._normals: np.ndarray = np.empty(0)
        self._uniforms: np.ndarray = np.empty(0)
        self._ni = 0
        self._ui = 0

    # --- randomness (buffered: one numpy call per 512 draws) -----------------------------

    def _normal(self) -> float:
        if self.rng is None:
            return 0.0
        if self._ni >= len(self._normals):
            self._normals = self.rng.standard_normal(512)
            self._ni = 0
        self._ni += 1
        return float(self._normals[self._ni - 1])

    def _uniform(self) -> float:
        if self.rng is None:
            return 0.5
        if self._ui >= len(self._uniforms):
            self._uniforms = self.rng.random(512)
            self._ui = 0
        self._ui += 1
        return float(self._uniforms[self._ui - 1])

    def _events(self, rate_dt: float) -> float:
        """Number of Poisson events with mean ``rate_dt`` (its mean in expectation mode)."""
        if self.rng is None or rate_dt <= 0:
            return max(rate_dt, 0.0)
        if rate_dt > 30:  # normal approximation, avoids a numpy call per step
            return max(0.0, round(rate_dt + math.sqrt(rate_dt) * self._normal()))
        # inversion with one uniform
        u = self._uniform()
        k, p = 0, math.exp(-rate_dt)
        cumulative = p
        while u > cumulative and k < 200:
            k += 1
            p *= rate_dt / k
            cumulative += p
        return float(k)

    # --- fault knobs ---------------------------------------------------------------------

    def inject(self, fault: str, severity: float, at: float) -> None:
        """Turn fault knob ``fault`` to ``severity`` in (0, 1] from time ``at``.

        Raises ``ValueError`` naming the problem for an unknown fault or a bad severity.
        Several injections of one fault combine by taking the largest active severity.
        """
        self.injections.append(FaultInjection(fault, float(severity), float(at)))

    def severity(self, fault: str, t: float | None = None) -> float:
        """Largest severity of ``fault`` active at ``t`` (default: now); 0 when inactive."""
        return fault_severity(self.injections, fault, self.state.t if t is None else t)

    def _active_severities(self) -> dict[str, float]:
        """Severity of every fault active now (one pass over the injections)."""
        return active_severities(self.injections, self.state.t)

    # --- boots ---------------------------------------------------------------------------

    def drain_boots(self) -> list[BootRecord]:
        """Reboots since the last call (for the agent wiring to emit ``Boot`` events)."""
        boots, self._boots = self._boots, []
        return boots

    def reboot(self, reason: RebootReason = RebootReason.REMOTE_COMMAND) -> None:
        """Restart the device now (commanded, update or fault-induced)."""
        s = self.state
        clean = not reason.is_error
        if not self.params.has_rtc and not clean:
            # an unclean reset comes back with the time fake-hwclock saved last
            s.clock_offset_s -= s.t - s.last_clock_save_t
        s.uptime_s = 0.0
        s.throttled = 0
        s.leak_pct = 0.0
        s.clock_needs_step = True
        s.clock_synced = False
        s.load_1m = 0.0
        s.burst_until = -math.inf
        s.boots += 1
        s.last_boot_reason = reason
        self.injections = surviving_reboot(self.injections, s.t)
        self._boots.append(BootRecord(s.t, reason))

    @property
    def is_on(self) -> bool:
        """False while the power is cut (the agent is not running then)."""
        return self.state.on

    # --- physics -------------------------------------------------------------------------

    def _demand(self, env: Environment, dt: float) -> tuple[float, float]:
        """Workload CPU and memory demand (%) for this step."""
        prof, s = self.profile, self.state
        local = s.t + env.utc_offset_s
        if env.cpu_demand_pct is not None:
            cpu = env.cpu_demand_pct
        else:
            cpu = prof.base_cpu_pct
            if prof.kind == "diurnal":
                cpu += prof.amplitude_cpu_pct * prof.daily_shape(local)
            elif prof.kind == "bursty":
                if self.rng is None:
                    duty = 1.0 - math.exp(-prof.bursts_per_hour * prof.burst_s / HOUR_S)
                    cpu += prof.burst_cpu_pct * duty
                else:
                    if s.t >= s.burst_until and self._uniform() < 1.0 - math.exp(
                        -prof.bursts_per_hour * dt / HOUR_S
                    ):
                        s.burst_until = s.t - prof.burst_s * math.log(1.0 - self._uniform())
                    if s.t < s.burst_until:
                        cpu += prof.burst_cpu_pct
            elif prof.kind == "batch" and prof.in_job(local):
                cpu += prof.job_cpu_pct
            cpu += 2.0 * self._normal()
        if env.mem_demand_pct is not None:
            mem = env.mem_demand_pct
        else:
            mem = prof.mem_pct
            if prof.kind == "diurnal":
                mem += prof.mem_amplitude_pct * prof.daily_shape(local)
            elif prof.kind == "batch" and prof.in_job(local):
                mem += prof.mem_amplitude_pct
        return cpu, mem

    def step(self, dt_s: float, env: Environment | None = None) -> None:
        """Advance the hardware by ``dt_s`` seconds of true time in environment ``env``."""
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be a positive finite number of seconds, got {dt_s!r}")
        env = env or Environment()
        p, s = self.params, self.state
        if not env.powered:
            self._step_off(dt_s, env)
            return
        if not s.on:
            s.on = True
            self.reboot(RebootReason.POWER_LOSS)
        sev = self._active_severities() if self.injections else _NO_FAULTS

        # workload
        cpu_demand, mem_demand = self._demand(env, dt_s)
        runaway = sev.get("cpu_runaway", 0.0)
        cpu_frac = min(1.0, max(0.0, (cpu_demand + 100.0 * runaway) / 100.0))

        # memory: demand + leak, overflow into swap, both full -> OOM reboot
        leak_sev = sev.get("memory_leak", 0.0)
        if leak_sev:
            s.leak_pct += 10.0 * leak_sev * dt_s / HOUR_S
        mem_total = max(0.0, mem_demand) + s.leak_pct
        swap_cap = 100.0 * p.swap_ratio
        s.mem_pct = min(100.0, mem_total if mem_total < 95.0 else 95.0 + (mem_total - 95.0) * 0.1)
        overflow = max(0.0, mem_total - s.mem_pct)
        s.swap_pct = min(100.0, 100.0 * overflow / swap_cap) if swap_cap > 0 else 0.0
        if overflow >= swap_cap:
            s.mem_pct, s.swap_pct = max(0.0, mem_demand), 0.0
            self._advance_time(dt_s, env, sev)
            self.reboot(RebootReason.OUT_OF_MEMORY)
            return

        # fan
        self._step_fan(dt_s, sev)

        # thermal throttling: the governor's frequency for this step
        paste = 1.0 + 5.0 * sev.get("thermal_paste", 0.0)
        r_th = p.thermal_resistance(s.fan_rpm, paste)
        decay = math.exp(-dt_s / (p.c_th_j_per_k * r_th))
        freq = 1.0
        t_ss = env.ambient_c + p.soc_power(cpu_frac, freq) * r_th
        if t_ss + (s.temp_c - t_ss) * decay > p.throttle_c and cpu_frac > 0:
            # hold the steady state at the limit, within the frequency range
            dyn = (p.throttle_c - env.ambient_c) / r_th - p.p_idle_w
            freq = max(p.min_freq_factor, min(1.0, dyn / ((p.p_max_w - p.p_idle_w) * cpu_frac)))

        # power supply at the demanded load; under-voltage makes the firmware cap the clock
        r_psu = p.psu_resistance_ohm + 0.6 * sev.get("weak_psu", 0.0)
        disc = p.psu_nominal_v**2 - 4.0 * r_psu * (p.soc_power(cpu_frac, freq) + p.p_periph_w)
        v_mean = (p.psu_nominal_v + math.sqrt(disc)) / 2.0 if disc > 0 else 0.0
        s.voltage_v = v_mean + p.psu_noise_v * self._normal()
        if self.rng is None:
            z = (p.undervoltage_v - v_mean) / p.psu_noise_v if p.psu_noise_v > 0 else 0.0
            s.undervoltage_prob = 0.5 * math.erfc(-z / math.sqrt(2.0))
            s.undervoltage = v_mean < p.undervoltage_v
        else:
            s.undervoltage = s.voltage_v < p.undervoltage_v
            s.undervoltage_prob = float(s.undervoltage)
        if s.undervoltage:
            freq = min(freq, p.min_freq_factor)

        # thermal step, integrated exactly
        t_ss = env.ambient_c + p.soc_power(cpu_frac, freq) * r_th
        s.temp_c = t_ss + (s.temp_c - t_ss) * decay
        s.freq_factor = freq
        s.cpu_pct = 100.0 * cpu_frac

        # storage
        self._step_storage(dt_s, sev)

        # bookkeeping, flags
        self._advance_time(dt_s, env, sev)
        s.load_1m += (p.cores * cpu_frac - s.load_1m) * (1.0 - math.exp(-dt_s / 60.0))
        now_bits = 0
        if s.undervoltage:
            now_bits |= UNDERVOLTAGE_NOW
        if freq < 1.0:
            now_bits |= THROTTLED_NOW | FREQ_CAPPED_NOW
        if s.temp_c >= p.soft_limit_c:
            now_bits |= SOFT_LIMIT_NOW | FREQ_CAPPED_NOW
        s.throttled = (s.throttled & (0xF << OCCURRED_SHIFT)) | now_bits
        s.throttled |= now_bits << OCCURRED_SHIFT
        if v_mean < p.brownout_v or s.voltage_v < p.brownout_v:
            self.reboot(RebootReason.BROWN_OUT)

    def _step_fan(self, dt: float, sev: dict[str, float]) -> None:
        p, s = self.params, self.state
        if p.fan_nominal_rpm <= 0:
            s.fan_rpm = 0.0
            return
        wear_rate = sev.get("fan_degradation", 0.0)
        if wear_rate:
            s.fan_wear = min(1.0, s.fan_wear + wear_rate * dt / DAY_S)
        loss = sev.get("fan_stall", 0.0)
        if loss > s.fan_speed_loss:
            s.fan_speed_loss = loss
        if not s.fan_stalled:
            if s.fan_wear >= 1.0 or s.fan_speed_loss >= 1.0:
                s.fan_stalled = True
            elif self.rng is not None and s.fan_wear > 0:
                hazard = s.fan_wear**4 * dt / HOUR_S
                s.fan_stalled = self._uniform() < 1.0 - math.exp(-hazard)
        if s.fan_stalled:
            s.fan_rpm = 0.0
            return
        rpm = p.fan_nominal_rpm * (1.0 - 0.8 * s.fan_wear) * (1.0 - s.fan_speed_loss)
        jitter = p.fan_nominal_rpm * (0.005 + 0.1 * s.fan_wear) * self._normal()
        s.fan_rpm = max(0.0, rpm + jitter)

    def _step_storage(self, dt: float, sev: dict[str, float]) -> None:
        p, s = self.params, self.state
        written_tb = self.profile.write_bps * dt / 1e12
        s.emmc_life_used_pct += 100.0 * written_tb / p.emmc_endurance_tbw
        s.emmc_life_used_pct += 5.0 * sev.get("storage_wear", 0.0) * dt / DAY_S
        s.disk_pct = min(99.0, s.disk_pct + 0.01 * written_tb * 1e3 / p.disk_capacity_gb * 100)
        u = s.emmc_life_used_pct / 100.0
        rate = p.io_error_rate_eol_per_s * math.exp(p.io_error_hazard_beta * (u - 1.0))
        s.disk_io_errors += self._events(rate * dt)

    def _advance_time(self, dt: float, env: Environment, sev: dict[str, float]) -> None:
        p, s = self.params, self.state
        s.t += dt
        s.uptime_s += dt
        drift = (p.clock_ppm + 1000.0 * sev.get("clock_drift", 0.0)) * 1e-6
        if env.ntp_reachable:
            if s.clock_needs_step:
                s.clock_offset_s = 0.0
                s.clock_needs_step = False
            # the discipline loop compensates drift and slews the offset, within its limit
            limit = p.ntp_max_slew_ppm * 1e-6
            wanted = drift + s.clock_offset_s / NTP_TAU_S
            if abs(wanted) <= limit:
                s.clock_offset_s *= math.exp(-dt / NTP_TAU_S)
            else:
                before = s.clock_offset_s
                s.clock_offset_s += (drift - math.copysign(limit, wanted)) * dt
                if abs(drift) <= limit and before * s.clock_offset_s < 0:
                    s.clock_offset_s = 0.0  # the slew reached zero within the step
        else:
            s.clock_offset_s += drift * dt
        s.clock_synced = env.ntp_reachable and abs(s.clock_offset_s) < 0.5
        if s.t - s.last_clock_save_t >= p.fake_hwclock_save_s:
            s.last_clock_save_t = s.t

    def _step_off(self, dt: float, env: Environment) -> None:
        p, s = self.params, self.state
        s.on = False
        tau = p.c_th_j_per_k * p.thermal_resistance(0.0)
        s.temp_c = env.ambient_c + (s.temp_c - env.ambient_c) * math.exp(-dt / tau)
        s.t += dt  # without an RTC the lost time is applied at power-on (see reboot)
        s.fan_rpm = s.cpu_pct = s.load_1m = 0.0
        s.clock_synced = False

    # --- readout -------------------------------------------------------------------------

    def sample(self, now: float | None = None) -> Sample:
        """The health sample the agent would read now, stamped with the *device's* clock.

        ``now`` is the true time (default: the hardware's own); the sample's ``ts`` is
        ``now + clock offset``, so clock drift is visible to the server. While the power
        is cut (:attr:`is_on` False) no agent runs, so callers should not sample then.
        """
        p, s = self.params, self.state
        t = s.t if now is None else now
        temp = s.temp_c + p.temp_noise_c * self._normal()
        return Sample(
            ts=max(0.0, t + s.clock_offset_s),
            cpu_pct=_pct(s.cpu_pct),
            load_1m=round(max(0.0, s.load_1m), 2),
            mem_pct=_pct(s.mem_pct),
            swap_pct=_pct(s.swap_pct),
            disk_pct=_pct(s.disk_pct),
            disk_io_errors=int(s.disk_io_errors),
            temp_c=round(min(300.0, max(-100.0, temp)), 2),
            throttled=s.throttled,
            undervoltage=s.undervoltage,
            fan_rpm=round(s.fan_rpm, 1) if p.fan_nominal_rpm > 0 else None,
            uptime_s=round(s.uptime_s, 3),
            emmc_life_used_pct=_pct(s.emmc_life_used_pct),
            clock_synced=s.clock_synced,
            custom={
                "supply_v": round(s.voltage_v, 3),
                "clock_offset_s": round(s.clock_offset_s, 4),
                "freq_factor": round(s.freq_factor, 3),
            },
        )

    def copy_state(self) -> HardwareState:
        """A detached copy of the current state (a checkpoint)."""
        return replace(self.state)


def _pct(value: float) -> float:
    return round(min(100.0, max(0.0, value)), 2)
