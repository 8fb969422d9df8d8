"""Fault hypotheses: the true injected fault ranks first; healthy devices stay unexplained."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from protocol import Sample
from simulator.hardware import SimulatedHardware
from simulator.hardware_faults import FAULTS
from simulator.hardware_params import (
    AmbientProfile,
    Environment,
    HardwareParams,
    LoadProfile,
    device_rng,
)
from simulator.hardware_state import HardwareState
from simulator.hypotheses import FieldSignal, rank_hypotheses

T0 = 1_790_000_000.0
HOUR = 3600.0


def field_day(
    fault: str | None,
    severity: float = 0.0,
    onset_h: float = 0.0,
    *,
    profile: LoadProfile | None = None,
    params: HardwareParams | None = None,
    prepare: Callable[[HardwareState], None] | None = None,
    seed: int = 5,
    ambient: AmbientProfile | None = None,
) -> list[Sample]:
    """A day of 1-minute samples from a noisy (seeded) device with ``fault`` injected."""
    hw = SimulatedHardware(
        params, profile or LoadProfile(kind="diurnal"), device_rng(seed, "field-1", "hardware")
    )
    hw.state.t = T0
    if prepare:
        prepare(hw.state)
    if fault:
        hw.inject(fault, severity, T0 + onset_h * HOUR)
    samples = []
    for _ in range(24 * 60):
        temp = ambient.at(hw.state.t) if ambient else 23.0
        hw.step(60.0, Environment(ambient_c=temp))
        samples.append(hw.sample())
    return samples


def worn_flash(state: HardwareState) -> None:
    state.emmc_life_used_pct = 88.0


CASES = {
    "fan_degradation": (0.5, 6.0, None),
    "fan_stall": (1.0, 10.0, None),
    "thermal_paste": (0.7, 8.0, None),
    "storage_wear": (0.8, 4.0, worn_flash),
    "weak_psu": (0.5, 6.0, None),
    "clock_drift": (0.8, 6.0, None),
    "memory_leak": (0.5, 6.0, None),
    "cpu_runaway": (0.4, 12.0, None),
}


def test_every_fault_kind_has_a_synthetic_case() -> None:
    assert set(CASES) == set(FAULTS)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_injected_fault_ranks_first(fault: str) -> None:
    severity, onset_h, prepare = CASES[fault]
    signal = FieldSignal.from_samples(field_day(fault, severity, onset_h, prepare=prepare))
    diagnosis = rank_hypotheses(signal)
    best = diagnosis.best
    assert best is not None
    assert best.fault == fault, [(h.fault, round(h.score, 3)) for h in diagnosis.ranked]
    assert best.supported
    assert best.score < diagnosis.baseline_score
    assert fault in best.explanation
    assert "better than a healthy device" in best.explanation
    # the fitted onset lands in the right part of the day
    assert abs(best.onset - (T0 + onset_h * HOUR)) < 6 * HOUR
    assert [h.score for h in diagnosis.ranked] == sorted(h.score for h in diagnosis.ranked)


def test_a_healthy_device_supports_no_hypothesis() -> None:
    signal = FieldSignal.from_samples(field_day(None, profile=LoadProfile(kind="idle")))
    diagnosis = rank_hypotheses(signal)
    assert len(diagnosis.ranked) == len(FAULTS)
    assert not any(h.supported for h in diagnosis.ranked)
    assert "not supported" in diagnosis.ranked[0].explanation


def test_fan_hypotheses_are_skipped_on_a_fanless_device() -> None:
    fanless = HardwareParams(fan_nominal_rpm=0.0, r_sink_c_per_w=7.0)
    samples = field_day("thermal_paste", 0.8, 8.0, params=fanless)
    assert all(s.fan_rpm is None for s in samples)
    diagnosis = rank_hypotheses(FieldSignal.from_samples(samples), fanless)
    assert set(diagnosis.skipped) == {"fan_degradation", "fan_stall"}
    assert "no fan" in diagnosis.skipped["fan_stall"]
    assert diagnosis.best is not None
    assert diagnosis.best.fault == "thermal_paste"


def test_the_ranking_is_deterministic() -> None:
    signal = FieldSignal.from_samples(field_day("fan_degradation", 0.5, 6.0))
    first, second = rank_hypotheses(signal), rank_hypotheses(signal)
    assert first == second


def test_a_restricted_hypothesis_list_only_tests_those() -> None:
    signal = FieldSignal.from_samples(field_day("weak_psu", 0.5, 6.0))
    diagnosis = rank_hypotheses(signal, faults=["weak_psu", "thermal_paste"])
    assert [h.fault for h in diagnosis.ranked] == ["weak_psu", "thermal_paste"]
    with pytest.raises(ValueError, match="unknown fault 'psu'"):
        rank_hypotheses(signal, faults=["psu"])


def test_bad_field_signals_are_refused_with_a_clear_error() -> None:
    samples = field_day(None, profile=LoadProfile(kind="idle"))
    with pytest.raises(ValueError, match="at least 3 samples"):
        FieldSignal.from_samples(samples[:2])
    with pytest.raises(ValueError, match="strictly increasing"):
        FieldSignal(np.array([3.0, 2.0, 1.0]), {})
    with pytest.raises(ValueError, match="unknown channel 'humidity'"):
        FieldSignal(np.array([1.0, 2.0, 3.0]), {"humidity": np.zeros(3)})
    with pytest.raises(ValueError, match="channel 'temp_c' has"):
        FieldSignal(np.array([1.0, 2.0, 3.0]), {"temp_c": np.zeros(2)})
    with pytest.raises(ValueError, match="channel 'temp_c' has values that are not finite"):
        FieldSignal(np.array([1.0, 2.0, 3.0]), {"temp_c": np.array([1.0, np.nan, 2.0])})
    signal = FieldSignal.from_samples(samples)
    with pytest.raises(ValueError, match="ambient_c"):
        rank_hypotheses(signal, ambient_c=float("inf"))


def test_a_very_short_signal_still_gets_a_ranking() -> None:
    samples = field_day("fan_stall", 1.0, 0.05)[:10]  # stalls three minutes in
    diagnosis = rank_hypotheses(FieldSignal.from_samples(samples))
    assert len(diagnosis.ranked) + len(diagnosis.skipped) == len(FAULTS)
    assert diagnosis.best is not None
    assert diagnosis.best.fault == "fan_stall"


def test_duplicate_and_unordered_samples_are_tolerated() -> None:
    samples = field_day("fan_stall", 1.0, 10.0)
    shuffled = list(reversed(samples)) + samples[:10]
    a = FieldSignal.from_samples(samples)
    b = FieldSignal.from_samples(shuffled)
    assert np.array_equal(a.ts, b.ts)
    assert a.channels.keys() == b.channels.keys()
    for name in a.channels:
        assert np.array_equal(a.channels[name], b.channels[name])


def test_the_region_s_ambient_profile_separates_weather_from_a_fault() -> None:
    weather = AmbientProfile(mean_c=28.0, amplitude_c=8.0, peak_hour=15.0)
    samples = field_day(
        "thermal_paste", 0.5, 14.0, profile=LoadProfile(kind="idle"), ambient=weather
    )
    diagnosis = rank_hypotheses(FieldSignal.from_samples(samples), ambient_c=weather)
    assert diagnosis.best is not None
    assert diagnosis.best.fault == "thermal_paste"
    assert diagnosis.best.supported
    assert diagnosis.baseline_channels["temp_c"] > 3 * diagnosis.best.channel_scores["temp_c"]
