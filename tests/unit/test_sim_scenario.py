"""Scenario files: validation errors that name the key, deterministic fleets, factory CSV."""

from __future__ import annotations

import copy
import csv
import io
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import protocol as p
from simulator.fleet_builder import (
    FACTORY_CSV_COLUMNS,
    build_fleet,
    select_devices,
    write_factory_csv,
)
from simulator.scenario import ScenarioError, load_scenario, parse_scenario
from simulator.scenario_fields import parse_duration
from simulator.scenario_model import Selector

SCENARIOS = Path(__file__).resolve().parents[2] / "simulator" / "scenarios"

BASE = """
[scenario]
name = "t"
seed = 11
duration = "2d"
speed = 60

[fleet]
devices = 40
id_prefix = "t"

[[fleet.models]]
name = "box"
share = 1.0
load = "diurnal"

[[fleet.models.revisions]]
name = "r1"
share = 0.5

[[fleet.models.revisions]]
name = "r2"
share = 0.5
hardware = { fan_nominal_rpm = 0 }

[[fleet.batches]]
name = "b1"
share = 0.5
production_date = 2025-06-01

[[fleet.batches]]
name = "b2"
share = 0.25
production_date = 2025-07-01

[[fleet.batches]]
name = "b3"
share = 0.25
production_date = 2025-08-01
latent_defects = { fan_degradation = 0.5 }

[[fleet.regions]]
name = "eu"
share = 1.0
timezone = "Europe/Paris"

[[events]]
at = "1h"
kind = "inject"
fault = "fan_stall"
select = { batch = "b2" }
"""


def base() -> dict[str, Any]:
    return tomllib.loads(BASE)


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc)
    return info.value.errors


def test_the_example_scenarios_load_and_build_with_exact_shares() -> None:
    demo = load_scenario(SCENARIOS / "demo.toml")
    fleet = build_fleet(demo)
    assert len(fleet) == 200
    assert Counter(d.hardware_revision for d in fleet) == {"rev-a": 40, "rev-b": 100, "rev-c": 60}
    assert Counter(d.region for d in fleet) == {"eu-central": 120, "us-southwest": 80}
    assert Counter(d.batch for d in fleet)["B2025-10"] == 80
    fan_defects = [d for d in fleet if any(f.fault == "fan_degradation" for f in d.latent_faults)]
    assert {d.batch for d in fan_defects} == {"B2025-10"}
    assert 10 <= len(fan_defects) <= 40  # 30 % of 80, drawn per device
    assert all(d.hardware.fan_nominal_rpm == 0 for d in fleet if d.hardware_revision == "rev-a")
    assert {d.utc_offset_s for d in fleet} == {3600.0, -7 * 3600.0}
    assert demo.speed is None
    assert demo.broker is not None
    assert demo.broker.port == 1883

    small = load_scenario(SCENARIOS / "small.toml")
    assert len(build_fleet(small)) == 10
    assert [e.kind for e in small.events] == ["partition", "inject"]  # ordered by time


def test_build_fleet_is_deterministic_and_depends_on_the_seed() -> None:
    scenario = parse_scenario(base())
    assert build_fleet(scenario) == build_fleet(parse_scenario(base()))
    other = base()
    other["scenario"]["seed"] = 12
    assert build_fleet(parse_scenario(other)) != build_fleet(scenario)


def test_a_device_s_draws_do_not_depend_on_fleet_size_or_order() -> None:
    small, large = base(), base()
    for doc in (small, large):  # one batch, so every device is in it whatever the size
        doc["fleet"]["batches"] = [
            {"name": "b3", "share": 1.0, "latent_defects": {"fan_degradation": 0.5}}
        ]
        doc["events"] = []
    large["fleet"]["devices"] = 400
    a = {d.device_id: d for d in build_fleet(parse_scenario(small))}
    b = {d.device_id: d for d in build_fleet(parse_scenario(large))}
    for device_id, spec in a.items():
        other = b[device_id]
        assert other.latent_faults == spec.latent_faults
        if other.hardware_revision == spec.hardware_revision:
            assert other.hardware == spec.hardware
    assert any(d.latent_faults for d in a.values())

    # the same device simulated alone or after others gives the same samples
    spec = next(d for d in a.values() if d.latent_faults)
    start = parse_scenario(small).start

    def trace() -> list[Any]:
        hw = spec.make_hardware(start)
        out = []
        for _ in range(100):
            hw.step(60.0, spec.environment(hw.state.t))
            out.append(hw.sample())
        return out

    first = trace()
    for other_spec in list(a.values())[:5]:
        other_spec.make_hardware(start).step(60.0)
    assert trace() == first


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["fleet"]["batches"][2].update(latent_defects={"fan": 0.1}),
            "fleet.batches[2].latent_defects.fan: unknown fault 'fan'",
        ),
        (
            lambda d: d["scenario"].update(durtion="1h"),
            "scenario.durtion: unknown key",
        ),
        (
            lambda d: d["scenario"].update(duration="2 hours"),
            "scenario.duration: expected a duration",
        ),
        (
            lambda d: d["scenario"].update(speed=-1),
            'scenario.speed: expected a real-time factor > 0 or "max"',
        ),
        (
            lambda d: d["fleet"]["batches"][0].update(share=0.9),
            "fleet.batches: shares must add up to 1, they add up to 1.4",
        ),
        (
            lambda d: d["fleet"]["models"][0]["revisions"][1]["hardware"].update(fan_rmp=1),
            "fleet.models[0].revisions[1].hardware.fan_rmp: unknown key",
        ),
        (
            lambda d: d["fleet"]["models"][0]["revisions"][0].update(hardware={"cores": 0}),
            "fleet.models[0].revisions[0].hardware.cores: must be >= 1",
        ),
        (
            lambda d: d["fleet"]["models"][0].update(load={"kind": "spiky"}),
            "fleet.models[0].load.kind: unknown load profile 'spiky'",
        ),
        (
            lambda d: d["fleet"]["regions"][0].update(timezone="Mars/Olympus"),
            "fleet.regions[0].timezone: unknown IANA time zone 'Mars/Olympus'",
        ),
        (
            lambda d: d["fleet"]["batches"][2]["latent_defects"].update(
                weak_psu={"probability": 0.1, "onset": "5h..1h"}
            ),
            "fleet.batches[2].latent_defects.weak_psu.onset: range '5h..1h'",
        ),
        (
            lambda d: d["events"].append({"at": "1h", "kind": "earthquake"}),
            "events[1].kind: unknown event kind 'earthquake'",
        ),
        (
            lambda d: d["events"][0]["select"].update(batch="b9"),
            "events[0].select.batch: no batch named 'b9'",
        ),
        (
            lambda d: d["events"][0].update(at="3d"),
            "events[0].at: after the end of the scenario",
        ),
        (
            lambda d: d["events"].append({"at": 5, "kind": "partition"}),
            "events[1].duration: required",
        ),
        (
            lambda d: d["events"][0].update(fault="fan_wobble"),
            "events[0].fault: unknown fault 'fan_wobble'",
        ),
        (
            lambda d: d["fleet"].update(devices=0),
            "fleet.devices: must be >= 1",
        ),
        (lambda d: d.pop("fleet"), "fleet: required"),
    ],
)
def test_validation_errors_name_the_key_path(edit: Any, expected: str) -> None:
    doc = copy.deepcopy(base())
    edit(doc)
    errors = errors_of(doc)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_problem_is_reported_at_once() -> None:
    doc = base()
    doc["scenario"]["seed"] = "x"
    doc["fleet"]["channel"] = "beta"
    doc["fleet"]["regions"][0]["ambient"] = {"mean": 500}
    errors = errors_of(doc)
    assert [e.split(":")[0] for e in errors] == [
        "scenario.seed",
        "fleet.channel",
        "fleet.regions[0].ambient.mean",
    ]


def test_unreadable_and_malformed_files_give_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nseed = 1\n")
    with pytest.raises(ScenarioError, match="TOML syntax"):
        load_scenario(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), (1.5, 1.5), ("90s", 90.0), ("15m", 900.0), ("1h30m", 5400.0), ("2d", 172800.0)],
)
def test_parse_duration_accepts_numbers_and_unit_strings(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 hours", "h", "-5", -5, True, "5x"])
def test_parse_duration_rejects_anything_else(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_selectors_pick_by_attribute_and_a_stable_share() -> None:
    scenario = parse_scenario(base())
    fleet = build_fleet(scenario)
    b2 = select_devices(Selector(batch="b2"), fleet, scenario.seed)
    assert len(b2) == 10
    assert {d.batch for d in b2} == {"b2"}
    half = select_devices(Selector(share=0.5), fleet, scenario.seed, salt="3")
    assert 10 <= len(half) <= 30
    reverse = select_devices(Selector(share=0.5), list(reversed(fleet)), scenario.seed, salt="3")
    assert {d.device_id for d in reverse} == {d.device_id for d in half}
    assert select_devices(Selector(devices=("t-00002",)), fleet, 11)[0].device_id == "t-00002"


def test_the_factory_csv_has_one_row_per_device_with_the_registry_columns(tmp_path: Path) -> None:
    fleet = build_fleet(parse_scenario(base()))
    path = tmp_path / "factory.csv"
    assert write_factory_csv(fleet, path) == 40
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == FACTORY_CSV_COLUMNS
    assert len(rows) == 40
    assert len({r["serial"] for r in rows}) == 40
    first = rows[0]
    assert first["device_id"] == "t-00001"
    assert first["timezone"] == "Europe/Paris"
    assert first["channel"] == "production"
    assert first["production_date"] in {"2025-06-01", "2025-07-01", "2025-08-01"}
    buf = io.StringIO()
    write_factory_csv(fleet, buf)
    assert buf.getvalue() == path.read_text()


def test_every_demo_device_runs_and_reports_valid_telemetry() -> None:
    scenario = load_scenario(SCENARIOS / "demo.toml")
    devices = [(spec, spec.make_hardware(scenario.start)) for spec in build_fleet(scenario)]
    for _ in range(30):
        for spec, hw in devices:
            hw.step(scenario.tick_s, spec.environment(hw.state.t))
    for spec, hw in devices:
        msg = p.Telemetry(
            device_id=spec.device_id, boot_id="b-1", seq=0, ts=scenario.start, samples=[hw.sample()]
        )
        assert p.decode(p.topic(spec.device_id, p.Kind.TELEMETRY), p.encode(msg)) == msg
    hot = [hw.state.temp_c for spec, hw in devices if spec.region == "us-southwest"]
    mild = [hw.state.temp_c for spec, hw in devices if spec.region == "eu-central"]
    assert sum(hot) / len(hot) > sum(mild) / len(mild)  # the warmer region runs warmer
