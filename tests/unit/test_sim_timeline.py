"""A whole scenario run as fast as possible: events reach the right devices, runs repeat."""

from __future__ import annotations

from pathlib import Path

import protocol as p
from simulator.fleet_builder import build_fleet
from simulator.scenario import load_scenario
from simulator.timeline import Timeline

SMALL = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "small.toml"


def run_small(step_s: float = 60.0) -> tuple[Timeline, dict[str, list[p.Sample]]]:
    """Step every device of small.toml through its day; sample every step."""
    scenario = load_scenario(SMALL)
    fleet = build_fleet(scenario)
    timeline = Timeline(scenario, fleet)
    devices = [(spec, timeline.make_hardware(spec)) for spec in fleet]
    out: dict[str, list[p.Sample]] = {spec.device_id: [] for spec in fleet}
    t = scenario.start
    while t < timeline.end:
        for spec, hw in devices:
            hw.step(step_s, timeline.environment(spec, t))
            if hw.is_on:
                out[spec.device_id].append(hw.sample())
        t += step_s
    return timeline, out


def test_a_scenario_run_is_identical_for_the_same_seed() -> None:
    assert run_small()[1] == run_small()[1]


def test_scenario_events_reach_exactly_the_selected_devices() -> None:
    timeline, samples = run_small()
    start = timeline.start
    noon = start + 12 * 3600

    stalled = samples["small-00003"]
    assert all((s.fan_rpm or 0) > 0 for s in stalled if s.ts < noon - 60)
    assert stalled[-1].fan_rpm == 0
    others = [d for d in samples if d != "small-00003"]
    assert all((samples[d][-1].fan_rpm or 0) > 0 for d in others)
    assert (stalled[-1].temp_c or 0) > max(samples[d][-1].temp_c or 0 for d in others)

    cut_off = [d for d in samples if timeline.partitioned(d, start + 7 * 3600)]
    assert 0 < len(cut_off) < len(samples)  # the event selects a share of the fleet
    for device_id, trace in samples.items():
        # NTP is unreachable during the partition (6 h to 8 h): the clock is not synced
        during = [s for s in trace if start + 6.2 * 3600 < s.ts < start + 7.9 * 3600]
        assert (not any(s.clock_synced for s in during)) == (device_id in cut_off)
        assert trace[-1].clock_synced


def test_hooks_and_outages_are_reported_by_time() -> None:
    scenario = load_scenario(SMALL.parent / "demo.toml")
    timeline = Timeline(scenario, build_fleet(scenario))
    start = scenario.start
    assert timeline.broker_down(start + 6 * 3600 + 60)
    assert not timeline.broker_down(start + 7 * 3600)
    assert [e.kind for e in timeline.hooks_due(start, start + 3 * 86400)] == ["rollout"]
    assert timeline.hooks_due(start, start + 86400) == []
    cut = [
        d
        for d in (s.device_id for s in build_fleet(scenario))
        if not timeline.powered(d, start + 30 * 3600 + 60)
    ]
    assert cut
    assert all(timeline.powered(d, start + 31 * 3600) for d in cut)
