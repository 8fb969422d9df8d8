"""The multivariate fault rule: attribution, restart survival, hysteresis, configuration."""

from __future__ import annotations

import json
import math
import random

import pytest

from agent.config import ConfigError, parse_config
from agent.core.faults import FaultEngine
from agent.core.multivariate import MultivariateRule
from agent.core.rules import RuleConfigError, build_rules
from agent.core.small_linalg import cholesky, quadratic_terms
from protocol import Sample

SIGNALS = ("load", "fan", "heat")


def make(**params: float) -> MultivariateRule:
    """A rule on the three related signals; a small ridge so a tight relation is trusted
    (the default ridge, tuned on SKAB, discounts correlations more)."""
    return MultivariateRule(SIGNALS, **{"ridge": 0.001, **params})  # type: ignore[arg-type]


def related(i: int, rng: random.Random, *, heat_offset: float = 0.0) -> Sample:
    """Three related signals: fan and heat follow a wandering load, with noise."""
    load = 50 + 20 * math.sin(i / 300.0) + rng.gauss(0, 1)
    fan = 1000 + 15 * load + rng.gauss(0, 10)
    heat = 30 + 0.4 * load + rng.gauss(0, 0.3) + heat_offset
    return Sample(ts=float(i), custom={"load": load, "fan": fan, "heat": heat})


def run(rule: MultivariateRule, start: int, stop: int, seed: int, **kw: float) -> list:
    rng = random.Random(seed)
    changes = []
    for i in range(start, stop):
        change = rule.update(related(i, rng, **kw))
        if change is not None:
            changes.append(change)
    return changes


def test_cholesky_solve_gives_hotellings_t2_and_its_terms() -> None:
    low = cholesky([[4.0, 2.0], [2.0, 3.0]])
    assert low is not None
    t2, terms = quadratic_terms(low, [1.0, 1.0])
    # S⁻¹ = [[3, -2], [-2, 4]] / 8 -> S⁻¹·d = [1/8, 2/8], T² = 3/8
    assert t2 == pytest.approx(0.375)
    assert terms == pytest.approx([0.125, 0.25])
    assert cholesky([[1.0, 2.0], [2.0, 1.0]]) is None  # not positive definite


def test_a_broken_relation_is_raised_and_attributed_to_the_signal_that_broke_it() -> None:
    rule = make()
    assert run(rule, 0, 2000, seed=1) == []  # the normal wander never raises
    # heat rises by 3 °C at unchanged load and fan: inside its own normal range
    # (30 + 0.4 x 30..70), but hot *for its load*
    changes = run(rule, 2000, 2600, seed=2, heat_offset=3.0)
    assert [c.raised for c in changes] == [True]
    raised = changes[0]
    assert raised.code == "multivariate_anomaly"
    assert raised.drivers[0][0] == "heat"
    assert raised.drivers[0][1] > 0.5
    assert "driven by heat" in raised.message
    assert raised.value is not None
    assert raised.value >= rule.raise_threshold


def test_hysteresis_between_the_raise_and_the_clear_threshold() -> None:
    rule = make(raise_threshold=40.0, clear_threshold=10.0)
    run(rule, 0, 2000, seed=1)
    assert [c.raised for c in run(rule, 2000, 2300, seed=2, heat_offset=3.0)] == [True]
    # a partial return, where T² sits between the clear and the raise thresholds, keeps it open
    rng = random.Random(3)
    scores = []
    for i in range(2300, 2600):
        assert rule.update(related(i, rng, heat_offset=1.2)) is None
        scores.append(rule.last_score)
    assert rule.active
    assert all(s is not None and s >= 10.0 for s in scores[-100:])
    assert min(s for s in scores[-100:] if s is not None) < 40.0
    cleared = run(rule, 2600, 3000, seed=4)
    assert [c.raised for c in cleared] == [False]
    assert not rule.active


def test_a_snapshot_round_trip_gives_identical_decisions() -> None:
    first = make()
    run(first, 0, 2100, seed=1)
    run(first, 2100, 2150, seed=5, heat_offset=3.0)  # mid-anomaly: raised
    saved = json.loads(json.dumps(first.snapshot()))
    second = make()
    second.restore(saved)
    assert second.snapshot() == first.snapshot()
    assert first.active
    rest_a = run(first, 2150, 3500, seed=6)
    rest_b = run(second, 2150, 3500, seed=6)
    assert [c.raised for c in rest_a] == [False]  # it clears once the relation is back
    assert rest_a == rest_b
    assert first.snapshot() == second.snapshot()


def test_an_open_fault_survives_a_restart_through_the_engine() -> None:
    engine = FaultEngine([make()])
    rng = random.Random(1)
    for i in range(2000):
        engine.update(related(i, rng))
    for i in range(2000, 2300):
        engine.update(related(i, rng, heat_offset=3.0))
    assert "multivariate_anomaly" in engine.open
    restarted = FaultEngine([make()])
    restarted.restore(json.loads(json.dumps(engine.snapshot())))
    assert "multivariate_anomaly" in restarted.open
    assert restarted.update(related(2300, rng, heat_offset=3.0)) == []  # not raised twice


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"v": 99},
        "nonsense",
    ],
)
def test_corrupt_or_foreign_state_is_ignored(state: object) -> None:
    rule = make()
    fresh = rule.snapshot()
    rule.restore(state)  # type: ignore[arg-type]
    assert rule.snapshot() == fresh


def test_corrupt_fields_in_a_real_snapshot_are_ignored() -> None:
    rule = make()
    run(rule, 0, 300, seed=1)
    good = rule.snapshot()
    for key, bad in (("cov", [1.0]), ("mean", [math.inf, 0, 0]), ("signals", ["a", "b", "c"])):
        other = make()
        before = other.snapshot()
        other.restore({**good, key: bad})
        assert other.snapshot() == before


def test_gaps_and_missing_signals_change_nothing() -> None:
    rule = make()
    run(rule, 0, 500, seed=1)
    before = rule.snapshot()
    assert rule.update(Sample(ts=600.0, custom={"load": 1.0, "fan": 2.0})) is None
    assert rule.update(Sample(ts=600.0, custom={"load": 1.0, "fan": math.nan, "heat": 3.0})) is None
    assert rule.snapshot() == before


def test_configured_in_the_agent_toml_like_the_adaptive_rule() -> None:
    faults = {
        "multivariate": [
            {"signals": ["temp_c", "cpu_pct", "fan_rpm"], "code": "cooling", "severity": "major"}
        ]
    }
    rules = build_rules(faults)
    rule = next(r for r in rules if r.code == "cooling")
    assert isinstance(rule, MultivariateRule)
    assert rule.signals == ("temp_c", "cpu_pct", "fan_rpm")
    assert rule.severity.value == "major"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, r"faults\.multivariate\[0\]\.signals: required"),
        ({"signals": "temp_c"}, r"faults\.multivariate\[0\]\.signals: required"),
        ({"signals": ["temp_c"]}, r"faults\.multivariate\[0\]: signals must list 2"),
        ({"signals": ["temp_c", "temp_c"]}, r"distinct"),
        ({"signals": ["temp_c", "bad name"]}, r"\.signals: 'bad name' is not a sample field"),
        ({"signals": ["temp_c", "cpu_pct"], "raise_treshold": 9}, r"\.raise_treshold: unknown"),
        (
            {"signals": ["temp_c", "cpu_pct"], "raise_threshold": 5, "clear_threshold": 9},
            r"clear_threshold <= raise_threshold",
        ),
        ({"signals": ["temp_c", "cpu_pct"], "mean_tau_s": -1}, r"mean_tau_s must be"),
        ({"signals": ["temp_c", "cpu_pct"], "raise_samples": 0}, r"raise_samples must be"),
        ({"signals": ["temp_c", "cpu_pct"], "severity": "loud"}, r"\.severity: 'loud'"),
    ],
)
def test_bad_configuration_names_the_key(entry: dict, message: str) -> None:
    with pytest.raises(RuleConfigError, match=message):
        build_rules({"multivariate": [entry]})


def test_bad_configuration_stops_the_agent_config_with_one_clear_error() -> None:
    data = {
        "device_id": "pi-1",
        "broker": "mqtt://localhost",
        "faults": {"multivariate": [{"signals": ["temp_c", "cpu_pct"], "ridge": "x"}]},
    }
    with pytest.raises(ConfigError, match=r"faults\.multivariate\[0\]: ridge must be"):
        parse_config(data)
    data["faults"] = {"multivariate": {"signals": ["temp_c", "cpu_pct"]}}
    with pytest.raises(ConfigError, match=r"faults\.multivariate: expected an array"):
        parse_config(data)
    two = {"signals": ["temp_c", "cpu_pct"]}
    data["faults"] = {"multivariate": [two, two]}
    with pytest.raises(ConfigError, match=r"multivariate\[1\]\.code: .* used twice"):
        parse_config(data)


def test_the_agent_core_publishes_the_raise_with_its_drivers() -> None:
    from agent.core.agent_core import AgentCore
    from agent.core.outputs import Publish
    from agent.core.sequence import SeqAllocator
    from protocol import FaultRaised

    faults = {"multivariate": [{"signals": list(SIGNALS), "code": "heat_relation", "ridge": 0.001}]}
    core = AgentCore("pi-1", "b1", seq=SeqAllocator(0), rules=build_rules(faults))
    rng = random.Random(1)
    events = []
    for i in range(2300):
        for out in core.on_sample(related(i, rng, heat_offset=3.0 if i >= 2000 else 0.0)):
            if isinstance(out, Publish) and isinstance(out.message, FaultRaised):
                events.append(out.message)
    assert [e.code for e in events] == ["heat_relation"]
    assert "driven by heat" in events[0].message


def test_simulated_devices_run_the_multivariate_rule_from_the_agent_faults_table() -> None:
    from simulator.engine import agent_settings, build_devices
    from simulator.scenario import ScenarioError
    from tests.unit.test_sim_engine import scenario

    group = {"signals": ["temp_c", "cpu_pct"], "code": "soc_heat_for_load"}
    devices = build_devices(scenario(agent={"faults": {"multivariate": [group]}}))
    rules = {rule.code: rule for rule in devices[0].core.faults.rules}
    assert isinstance(rules["soc_heat_for_load"], MultivariateRule)
    assert "over_temperature" in rules
    bad = scenario(agent={"faults": {"multivariate": [{"signals": ["temp_c"]}]}})
    with pytest.raises(ScenarioError, match=r"faults\.multivariate\[0\]: signals must list 2"):
        agent_settings(bad)


def test_a_long_gap_restarts_the_warm_up_but_keeps_the_learned_normal() -> None:
    rule = make(warmup_samples=20)
    run(rule, 0, 1000, seed=1)
    learned = rule.state.n_learned
    rng = random.Random(9)
    # two hours later (relearn_after_s is one hour): the first samples are not scored
    for i in range(7200 + 1000, 7200 + 1019):
        assert rule.update(related(i, rng)) is None
        assert rule.last_score is None
    # the first sample after the gap restarts the smoothing; the others teach on top of the
    # normal learned before the gap (nothing is forgotten)
    assert rule.state.n_learned == learned + 18
    rule.update(related(7200 + 1019, rng))
    assert rule.last_score is not None
