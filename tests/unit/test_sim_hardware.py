"""Simulated hardware: physics sanity, fault knobs, reboots and determinism for a seed."""

from __future__ import annotations

import itertools

import pytest

import protocol as p
from simulator.hardware import SimulatedHardware
from simulator.hardware_faults import FAULTS
from simulator.hardware_params import Environment, HardwareParams, LoadProfile, device_rng
from simulator.hardware_state import OCCURRED_SHIFT, SOFT_LIMIT_NOW, THROTTLED_NOW, UNDERVOLTAGE_NOW

T0 = 1_790_000_000.0
IDLE = LoadProfile(kind="idle", base_cpu_pct=2.0)


def run(hw: SimulatedHardware, seconds: float, env: Environment, dt: float = 10.0) -> None:
    for _ in range(round(seconds / dt)):
        hw.step(dt, env)


def expected(params: HardwareParams | None = None) -> SimulatedHardware:
    """Noise-free hardware (expectation mode) starting at ambient temperature."""
    hw = SimulatedHardware(params, IDLE, None, start_time=T0)
    hw.state.temp_c = 25.0
    return hw


def test_temperature_rises_with_load_and_settles_at_the_steady_state() -> None:
    params = HardwareParams()
    busy = Environment(ambient_c=25.0, cpu_demand_pct=100.0)
    hw = expected(params)
    temps = []
    for _ in range(360):  # one hour in 10 s steps
        hw.step(10.0, busy)
        temps.append(hw.state.temp_c)
    assert all(b >= a for a, b in itertools.pairwise(temps))
    steady = 25.0 + params.soc_power(1.0) * params.thermal_resistance(params.fan_nominal_rpm)
    assert temps[-1] == pytest.approx(steady, abs=0.05)
    assert temps[-1] - temps[-60] < 0.05  # settled over the last ten minutes

    idle = expected(params)
    run(idle, 3600, Environment(ambient_c=25.0, cpu_demand_pct=5.0))
    assert idle.state.temp_c < temps[-1] - 5


def test_fan_degradation_slows_the_fan_and_raises_the_temperature() -> None:
    env = Environment(ambient_c=25.0, cpu_demand_pct=60.0)
    healthy, worn = expected(), expected()
    worn.inject("fan_degradation", 0.5, at=T0)
    run(healthy, 86_400, env, dt=60)
    run(worn, 86_400, env, dt=60)
    assert worn.state.fan_rpm < 0.7 * healthy.state.fan_rpm
    assert worn.state.temp_c > healthy.state.temp_c + 2


def test_a_stalled_fan_and_dried_paste_run_hot_until_the_firmware_throttles() -> None:
    env = Environment(ambient_c=35.0, cpu_demand_pct=100.0)
    hw = expected()
    run(hw, 1800, env)
    assert hw.state.throttled & THROTTLED_NOW == 0
    hw.inject("fan_stall", 1.0, at=hw.state.t)
    hw.inject("thermal_paste", 1.0, at=hw.state.t)
    run(hw, 3600, env)
    sample = hw.sample()
    assert sample.fan_rpm == 0
    assert sample.throttled is not None
    assert sample.throttled & THROTTLED_NOW
    assert sample.throttled & SOFT_LIMIT_NOW
    assert sample.throttled & (THROTTLED_NOW << OCCURRED_SHIFT)
    assert hw.state.freq_factor < 1.0
    assert sample.temp_c == pytest.approx(80.0, abs=0.5)  # held at the limit


def test_a_weak_psu_under_load_sets_the_undervoltage_bits_and_they_stay_as_history() -> None:
    hw = expected()
    hw.inject("weak_psu", 0.5, at=T0)
    run(hw, 60, Environment(cpu_demand_pct=2.0))
    assert not hw.sample().undervoltage  # fine at idle
    run(hw, 60, Environment(cpu_demand_pct=100.0))
    loaded = hw.sample()
    assert loaded.undervoltage
    assert loaded.throttled is not None
    assert loaded.throttled & UNDERVOLTAGE_NOW
    assert loaded.throttled & (UNDERVOLTAGE_NOW << OCCURRED_SHIFT)
    assert loaded.custom["supply_v"] < HardwareParams().undervoltage_v
    run(hw, 60, Environment(cpu_demand_pct=2.0))
    after = hw.sample()
    assert after.throttled is not None
    assert not after.throttled & UNDERVOLTAGE_NOW
    assert after.throttled & (UNDERVOLTAGE_NOW << OCCURRED_SHIFT)  # sticky until reboot


def test_a_very_weak_psu_browns_out_under_load_and_reboots() -> None:
    hw = expected()
    run(hw, 600, Environment(cpu_demand_pct=5.0))
    hw.drain_boots()
    hw.inject("weak_psu", 1.0, at=hw.state.t)
    hw.step(10.0, Environment(cpu_demand_pct=100.0))
    boots = hw.drain_boots()
    assert [b.reason for b in boots] == [p.RebootReason.BROWN_OUT]
    assert hw.sample().uptime_s < 600
    assert p.RebootReason.BROWN_OUT.is_error


def test_storage_wear_makes_io_errors_rise_as_the_flash_nears_end_of_life() -> None:
    def errors_after_a_day(life_used: float, wear: float | None) -> int:
        hw = SimulatedHardware(None, IDLE, device_rng(1, "disk", "hardware"), start_time=T0)
        hw.state.emmc_life_used_pct = life_used
        if wear:
            hw.inject("storage_wear", wear, at=T0)
        run(hw, 86_400, Environment(), dt=60)
        return hw.sample().disk_io_errors or 0

    fresh, old = errors_after_a_day(20.0, None), errors_after_a_day(92.0, None)
    failing = errors_after_a_day(92.0, 1.0)
    assert fresh == 0
    assert old > fresh
    assert failing > 2 * old


def test_clock_drift_accumulates_without_ntp_and_ntp_cannot_hide_a_large_drift() -> None:
    params = HardwareParams(clock_ppm=100.0)
    hw = expected(params)
    run(hw, 600, Environment())  # first sync
    assert hw.sample().clock_synced
    run(hw, 36_000, Environment(ntp_reachable=False), dt=60)
    sample = hw.sample()
    assert not sample.clock_synced
    assert sample.custom["clock_offset_s"] == pytest.approx(100e-6 * 36_000, rel=0.02)
    assert sample.ts == pytest.approx(hw.state.t + sample.custom["clock_offset_s"], abs=1e-3)

    small = expected()
    small.inject("clock_drift", 0.2, at=T0)  # 200 ppm: within what NTP corrects
    run(small, 36_000, Environment(), dt=60)
    assert small.sample().clock_synced
    large = expected()
    large.inject("clock_drift", 1.0, at=T0)  # 1000 ppm: beyond the 500 ppm slew limit
    run(large, 36_000, Environment(), dt=60)
    assert not large.sample().clock_synced
    assert large.state.clock_offset_s == pytest.approx(500e-6 * 36_000, rel=0.05)


def test_a_memory_leak_fills_ram_then_swap_then_reboots_and_the_reboot_clears_it() -> None:
    hw = expected()
    hw.inject("memory_leak", 1.0, at=T0)
    env = Environment(mem_demand_pct=30.0)
    run(hw, 7 * 3600, env, dt=60)
    sample = hw.sample()
    assert (sample.mem_pct or 0) > 90
    assert (sample.swap_pct or 0) > 0
    run(hw, 3 * 3600, env, dt=60)
    assert [b.reason for b in hw.drain_boots()] == [p.RebootReason.OUT_OF_MEMORY]
    run(hw, 3600, env, dt=60)
    assert hw.sample().mem_pct == pytest.approx(30.0)
    assert not hw.injections


def test_a_cpu_runaway_adds_load_and_heat_until_a_reboot() -> None:
    hw = expected()
    env = Environment(cpu_demand_pct=10.0)
    run(hw, 1800, env)
    cool = hw.sample()
    hw.inject("cpu_runaway", 0.5, at=hw.state.t)
    run(hw, 1800, env)
    hot = hw.sample()
    assert hot.cpu_pct == pytest.approx(60.0)
    assert (hot.load_1m or 0) > 2.0
    assert (hot.temp_c or 0) > (cool.temp_c or 0)
    hw.reboot()
    run(hw, 600, env)
    assert hw.sample().cpu_pct == pytest.approx(10.0)


def test_a_power_cut_without_rtc_loses_time_until_ntp_steps_the_clock() -> None:
    hw = expected()
    run(hw, 600, Environment())
    hw.drain_boots()
    run(hw, 300, Environment(powered=False))
    assert not hw.is_on
    hw.step(10.0, Environment(ntp_reachable=False))
    assert [b.reason for b in hw.drain_boots()] == [p.RebootReason.POWER_LOSS]
    sample = hw.sample()
    assert sample.custom["clock_offset_s"] <= -300
    assert not sample.clock_synced
    hw.step(10.0, Environment())
    assert hw.sample().clock_synced


@pytest.mark.parametrize("fault", FAULTS)
def test_samples_under_every_fault_are_valid_protocol_telemetry(fault: str) -> None:
    hw = SimulatedHardware(
        None, LoadProfile(kind="bursty"), device_rng(3, "pi-1", "hardware"), start_time=T0
    )
    hw.inject(fault, 1.0, at=T0 + 3600)
    samples = []
    for _ in range(24 * 6):
        hw.step(600.0, Environment(ambient_c=30.0))
        samples.append(hw.sample())
    msg = p.Telemetry(device_id="pi-1", boot_id="b-1", seq=0, ts=T0, samples=samples)
    assert p.decode(p.topic("pi-1", p.Kind.TELEMETRY), p.encode(msg)) == msg


@pytest.mark.parametrize(
    ("fault", "severity", "message"),
    [
        ("fan", 0.5, "unknown fault 'fan'"),
        ("weak_psu", 0.0, "severity must be in (0, 1]"),
        ("weak_psu", 1.5, "severity must be in (0, 1]"),
    ],
)
def test_inject_rejects_unknown_faults_and_bad_severities(
    fault: str, severity: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        SimulatedHardware().inject(fault, severity, at=0.0)


def test_bad_steps_and_params_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="dt_s"):
        SimulatedHardware().step(0.0)
    with pytest.raises(ValueError, match="psu_resistance_ohm"):
        HardwareParams(psu_resistance_ohm=-1.0)
    with pytest.raises(ValueError, match="unknown load profile"):
        LoadProfile(kind="spiky")  # type: ignore[arg-type]


def _trace(seed: int, device_id: str, steps: int = 500) -> list[p.Sample]:
    hw = SimulatedHardware(
        None, LoadProfile(kind="bursty"), device_rng(seed, device_id, "hardware"), start_time=T0
    )
    hw.inject("fan_degradation", 0.8, at=T0 + 600)
    out = []
    for _ in range(steps):
        hw.step(30.0, Environment(ambient_c=28.0))
        out.append(hw.sample())
    return out


def test_the_same_seed_gives_identical_samples_and_another_seed_does_not() -> None:
    assert _trace(42, "pi-7") == _trace(42, "pi-7")
    assert _trace(42, "pi-7") != _trace(43, "pi-7")
    assert _trace(42, "pi-7") != _trace(42, "pi-8")


def test_device_order_does_not_change_any_device_s_samples() -> None:
    ids = ["pi-1", "pi-2", "pi-3"]

    def interleaved(order: list[str]) -> dict[str, list[p.Sample]]:
        devices = {
            d: SimulatedHardware(
                None, LoadProfile(kind="bursty"), device_rng(9, d, "hardware"), start_time=T0
            )
            for d in order
        }
        out: dict[str, list[p.Sample]] = {d: [] for d in order}
        for _ in range(200):
            for d in order:
                devices[d].step(30.0, Environment())
                out[d].append(devices[d].sample())
        return out

    assert interleaved(ids) == interleaved(list(reversed(ids)))
