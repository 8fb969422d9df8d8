"""Fault rules: debounce and hysteresis, the built-in rule set and its configuration."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.fault_types import FaultRule
from agent.core.faults import Debounce, FaultEngine, RestartLoopRule, ThresholdRule
from agent.core.rules import BUILTINS, RuleConfigError, build_rules
from protocol import Sample, Severity


def temps(values: list[float], *, start: float = 0.0, step: float = 10.0) -> list[Sample]:
    return [Sample(ts=start + i * step, temp_c=v) for i, v in enumerate(values)]


def run(rule: FaultRule, samples: list[Sample]) -> list[tuple[float, bool]]:
    out = []
    for s in samples:
        change = rule.update(s)
        if change is not None:
            out.append((change.ts, change.raised))
    return out


def over_temp(samples: int = 3, seconds: float = 0.0) -> ThresholdRule:
    return ThresholdRule(
        "over_temperature",
        "temp_c",
        raise_at=80.0,
        clear_at=75.0,
        severity=Severity.MAJOR,
        raise_debounce=Debounce(samples, seconds),
        clear_debounce=Debounce(samples, seconds),
    )


def test_signal_oscillating_around_threshold_never_flaps() -> None:
    rule = over_temp()
    wobble = [79.5 if i % 2 else 80.5 for i in range(500)]
    assert run(rule, temps(wobble)) == []
    assert not rule.active


@given(st.lists(st.floats(min_value=-0.8, max_value=0.8), min_size=20, max_size=400))
def test_noise_around_threshold_raises_at_most_once(noise: list[float]) -> None:
    """Values within ±1 % of the threshold can raise once but never clear (hysteresis)."""
    rule = over_temp()
    changes = run(rule, temps([80.0 + n for n in noise]))
    assert [raised for _, raised in changes] in ([], [True])


def test_debounce_and_hysteresis_cut_transitions_tenfold_against_naive_threshold() -> None:
    rng = random.Random(7)
    values = [80.0 + rng.uniform(-0.8, 0.8) for _ in range(2000)]
    naive = sum(1 for a, b in itertools.pairwise(values) if (a >= 80) != (b >= 80))
    ours = len(run(over_temp(), temps(values)))
    assert naive >= 100
    assert ours * 10 <= naive


def test_real_step_is_raised_within_the_debounce_window_and_cleared_after_drop() -> None:
    rule = over_temp(samples=3)
    values = [60.0] * 5 + [90.0] * 5 + [70.0] * 5
    changes = run(rule, temps(values))
    # step at sample 5 (t=50); raised at the 3rd hot sample (t=70); cleared at t=120.
    assert changes == [(70.0, True), (120.0, False)]


def test_value_inside_the_hysteresis_band_does_not_clear() -> None:
    rule = over_temp(samples=1)
    assert run(rule, temps([85.0] + [77.0] * 50)) == [(0.0, True)]
    assert rule.active


def test_duration_debounce_needs_both_count_and_time() -> None:
    rule = over_temp(samples=2, seconds=60.0)
    changes = run(rule, temps([90.0] * 10, step=10.0))
    assert changes == [(60.0, True)]


def test_missing_readings_neither_advance_nor_reset_a_streak() -> None:
    rule = over_temp(samples=3)
    samples = [
        Sample(ts=0, temp_c=90.0),
        Sample(ts=1),
        Sample(ts=2, temp_c=90.0),
        Sample(ts=3),
        Sample(ts=4, temp_c=90.0),
    ]
    assert run(rule, samples) == [(4.0, True)]


def test_rule_snapshot_survives_a_restart_without_re_raising() -> None:
    rule = over_temp(samples=1)
    run(rule, temps([90.0]))
    fresh = over_temp(samples=1)
    fresh.restore(rule.snapshot())
    assert fresh.active
    assert run(fresh, temps([91.0, 92.0])) == []
    fresh.restore({"active": "yes", "streak": -1})  # corrupt state is ignored
    assert fresh.active


def test_engine_keeps_open_faults_and_restores_them() -> None:
    engine = FaultEngine(build_rules({}))
    for s in temps([90.0] * 3):
        engine.update(s)
    assert set(engine.open) == {"over_temperature"}
    again = FaultEngine(build_rules({}))
    again.restore(engine.snapshot())
    assert set(again.open) == {"over_temperature"}
    assert again.update(Sample(ts=100, temp_c=91.0)) == []


def test_engine_names_the_rules_whose_saved_state_it_refused() -> None:
    engine = FaultEngine(build_rules({}))
    for s in temps([90.0] * 3):
        engine.update(s)
    saved = engine.snapshot()
    assert FaultEngine(build_rules({})).restore(saved) == []
    saved["rules"]["over_temperature"] = {"active": "yes", "streak": -1}
    saved["rules"]["fan_stopped"] = "not a dict"
    saved["rules"]["no_such_rule"] = {"active": True}  # a rule no longer configured: not news
    again = FaultEngine(build_rules({}))
    assert sorted(again.restore(saved)) == ["fan_stopped", "over_temperature"]
    assert "over_temperature" not in again.open  # refused: the rule starts fresh


def test_a_counter_rules_malformed_last_reading_refuses_its_whole_state() -> None:
    """README: a rule's saved state is taken or refused whole; the counter rule's last
    reading is part of it (it was silently dropped while the debounce part was taken)."""
    engine = FaultEngine(build_rules({}))
    code = next(r.code for r in engine.rules if "last" in r.snapshot())
    saved = engine.snapshot()
    saved["rules"][code] = {"active": True, "streak": 0, "since": None, "last": "12"}
    again = FaultEngine(build_rules({}))
    assert again.restore(saved) == [code]
    assert not next(r for r in again.rules if r.code == code).active
    saved["rules"][code]["last"] = None  # no reading yet: taken
    assert FaultEngine(build_rules({})).restore(saved) == []


def test_engine_refuses_duplicate_codes() -> None:
    with pytest.raises(ValueError, match="over_temperature"):
        FaultEngine([over_temp(), over_temp()])


def test_every_builtin_rule_is_built_by_default() -> None:
    codes = {rule.code for rule in build_rules({})}
    assert codes == set(BUILTINS)
    expected = {
        "over_temperature",
        "thermal_throttling",
        "under_voltage",
        "disk_nearly_full",
        "storage_io_errors",
        "storage_wear",
        "memory_pressure",
        "fan_stopped",
        "clock_not_synced",
        "agent_restart_loop",
    }
    assert codes == expected


def codes_raised(rules: list[FaultRule], samples: list[Sample]) -> list[str]:
    engine = FaultEngine(rules)
    raised = []
    for s in samples:
        raised += [c.code for c in engine.update(s) if c.raised]
    return raised


def test_under_voltage_from_pi_bits_or_hwmon_flag() -> None:
    assert codes_raised(build_rules({}), [Sample(ts=0, throttled=0x50005)]) == ["under_voltage"]
    assert codes_raised(build_rules({}), [Sample(ts=0, undervoltage=True)]) == ["under_voltage"]
    # "has occurred since boot" bits alone are history, not a current fault
    assert codes_raised(build_rules({}), [Sample(ts=0, throttled=0x50000)]) == []


def test_thermal_throttling_from_pi_bits() -> None:
    samples = [Sample(ts=t, throttled=0x4) for t in range(2)]
    assert codes_raised(build_rules({}), samples) == ["thermal_throttling"]


def test_fan_stopped_only_when_warm() -> None:
    cool = [Sample(ts=t, fan_rpm=0.0, temp_c=45.0) for t in range(10)]
    warm = [Sample(ts=t, fan_rpm=0.0, temp_c=65.0) for t in range(10, 13)]
    assert codes_raised(build_rules({}), cool) == []
    assert codes_raised(build_rules({}), cool + warm) == ["fan_stopped"]


def test_storage_io_errors_raise_on_increase_not_on_a_stable_count() -> None:
    stable = [Sample(ts=t, disk_io_errors=4) for t in range(5)]
    assert codes_raised(build_rules({}), stable) == []
    grow = [*stable, Sample(ts=5, disk_io_errors=6)]
    assert codes_raised(build_rules({}), grow) == ["storage_io_errors"]


def test_clock_not_synced_needs_five_minutes() -> None:
    unsynced = [Sample(ts=t * 60.0, clock_synced=False) for t in range(6)]
    rules = build_rules({})
    engine = FaultEngine(rules)
    times = [c.ts for s in unsynced for c in engine.update(s) if c.raised]
    assert times == [300.0]


def test_memory_disk_and_wear_thresholds() -> None:
    samples = [
        Sample(ts=t * 30.0, mem_pct=95.0, disk_pct=95.0, emmc_life_used_pct=100.0) for t in range(3)
    ]
    assert sorted(set(codes_raised(build_rules({}), samples))) == [
        "disk_nearly_full",
        "memory_pressure",
        "storage_wear",
    ]


def test_restart_loop_raises_on_many_starts_and_clears_after_a_stable_run() -> None:
    rule = RestartLoopRule([0, 60, 120, 180, 240], max_starts=5, window_s=900, stable_s=600)
    assert run(rule, [Sample(ts=250), Sample(ts=500), Sample(ts=840), Sample(ts=900)]) == [
        (250.0, True),
        (840.0, False),
    ]
    calm = RestartLoopRule([0, 3600, 7200])
    assert run(calm, [Sample(ts=7300)]) == []


def test_config_overrides_thresholds_and_disables_rules() -> None:
    rules = build_rules(
        {
            "over_temperature": {"raise_at": 70, "clear_at": 65, "samples": 1},
            "fan_stopped": {"enabled": False},
        }
    )
    assert "fan_stopped" not in {r.code for r in rules}
    assert codes_raised(rules, [Sample(ts=0, temp_c=71.0)]) == ["over_temperature"]


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"over_temprature": {}}, "faults.over_temprature: unknown fault rule"),
        ({"over_temperature": {"raise_at": "hot"}}, "faults.over_temperature.raise_at"),
        (
            {"over_temperature": {"raise_at": 70, "clear_at": 75}},
            "clear_at 75.0 must be <= raise_at",
        ),
        ({"over_temperature": {"samples": 0}}, "faults.over_temperature.samples"),
        ({"over_temperature": {"severity": "loud"}}, "faults.over_temperature.severity"),
        ({"over_temperature": {"treshold": 1}}, "unknown setting 'treshold'"),
        ({"under_voltage": {"raise_at": 1}}, "has no thresholds"),
        ({"adaptive": [{"code": "x"}]}, "faults.adaptive[0].signal: required"),
        ({"adaptive": {"signal": "fan_rpm"}}, "expected an array of tables"),
        (
            {"adaptive": [{"signal": "fan_rpm", "code": 123}]},
            "faults.adaptive[0].code: expected a non-empty string",
        ),
        (
            {"adaptive": [{"signal": "fan_rpm", "code": ""}]},
            "faults.adaptive[0].code: expected a non-empty string",
        ),
        (
            {"adaptive": [{"signal": "fan_rpm", "raise_samples": "3"}]},
            "faults.adaptive[0]: raise_samples must be a whole number, not '3'",
        ),
    ],
)
def test_bad_fault_config_names_the_key(faults: dict[str, object], message: str) -> None:
    with pytest.raises(RuleConfigError) as info:
        build_rules(faults)
    assert message in str(info.value)


def test_adaptive_rules_come_from_config_when_available() -> None:
    try:
        import agent.core.adaptive  # noqa: F401
    except ImportError:
        with pytest.raises(RuleConfigError, match="not available in this agent build"):
            build_rules({"adaptive": [{"signal": "fan_rpm"}]})
        return
    rules = build_rules({"adaptive": [{"signal": "fan_rpm"}, {"signal": "temp_c"}]})
    assert len(rules) == len(BUILTINS) + 2


def test_a_huge_whole_count_does_not_crash_the_configuration() -> None:
    """TOML integers are not bounded by tomllib; the whole-number check converted them
    to float and an ``OverflowError`` escaped ``build_rules`` (it catches ValueError)."""
    rules = build_rules({"adaptive": [{"signal": "fan_rpm", "raise_samples": 10**400}]})
    assert len(rules) == len(BUILTINS) + 1
