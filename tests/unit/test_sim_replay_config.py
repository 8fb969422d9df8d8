"""``fleet-sim replay --config`` (the device's own fault rules) and ``--set`` (tuning the
rules the replay adds), with the errors a technician sees for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator.replay_rules import parse_settings
from tests.unit.test_sim_replay_columns import BREAK_AT, T0, replay, write_pump

PUMP = ["--time-col", "datetime", "--delimiter", ";"]
ALL_COLUMNS = ["--value-col", "flow", "--value-col", "current", "--value-col", "pressure"]


@pytest.fixture
def pump(tmp_path: Path) -> Path:
    path = tmp_path / "pump.csv"
    write_pump(path)
    return path


def raised(output: str) -> list[dict[str, object]]:
    alarms = [json.loads(line) for line in output.splitlines()]
    return [a for a in alarms if a["event"] == "raised"]


def test_set_tunes_the_rule_the_replay_adds(pump: Path) -> None:
    code, output = replay(
        "--csv", str(pump), *PUMP, *ALL_COLUMNS, "--json",
        "--set", "code=pump_bed", "--set", "severity=minor",
    )  # fmt: skip
    assert code == 0, output
    [alarm] = raised(output)
    assert (alarm["code"], alarm["severity"]) == ("pump_bed", "minor")
    assert T0 + BREAK_AT <= alarm["ts"] <= T0 + BREAK_AT + 60


def test_set_routes_a_setting_to_the_rule_that_has_it(tmp_path: Path) -> None:
    """``--rule all``: ``direction`` belongs to the adaptive rule only; watching for
    downward departures silences the adaptive rule on the current's upward step and
    leaves the multivariate rule as it is. (A row every 10 s: the step comes after the
    adaptive rule's warm-up.)"""
    pump = tmp_path / "pump.csv"
    write_pump(pump, step_s=10)
    args = ["--csv", str(pump), *PUMP, *ALL_COLUMNS, "--rule", "all", "--json"]
    code, output = replay(*args)
    assert code == 0, output
    assert {"current_anomaly", "multivariate_anomaly"} <= {a["code"] for a in raised(output)}
    code, output = replay(*args, "--set", "direction=down")
    assert code == 0, output
    codes = {a["code"] for a in raised(output)}
    assert "multivariate_anomaly" in codes
    assert "current_anomaly" not in codes


def test_config_runs_the_devices_own_rules_instead_of_adding_one(
    pump: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text(
        "[faults.over_temperature]\nenabled = false\n\n"
        '[[faults.multivariate]]\nsignals = ["flow", "current", "pressure"]\n'
        'code = "bed_relation"\nseverity = "critical"\n\n'
        '[[faults.adaptive]]\nsignal = "current"\ncode = "current_level"\n'
        "raise_threshold = 1000.0\nclear_threshold = 1.0\n"
    )
    code, output = replay(
        "--csv", str(pump), *PUMP, *ALL_COLUMNS, "--rule", "all", "--json",
        "--config", str(agent),
    )  # fmt: skip
    assert code == 0, output
    codes = [a["code"] for a in raised(output)]
    # The configured multivariate rule replaces the replay's own (one raise, its code and
    # severity); the configured adaptive rule on current (never raising) replaces the
    # replay's default one on that signal.
    assert "bed_relation" in codes
    assert "multivariate_anomaly" not in codes
    assert "current_level" not in codes
    assert "current_anomaly" not in codes
    assert {a["severity"] for a in raised(output) if a["code"] == "bed_relation"} == {"critical"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "raise_treshold=6"], "--set raise_treshold: not a setting of the adaptive"),
        (["--set", "raise_threshold"], "--set 'raise_threshold': expected name=value"),
        (["--set", "raise_threshold=-1"], "--set (multivariate rule): "),
        (["--config", "missing.toml"], "missing.toml: cannot read"),
    ],
)
def test_bad_settings_stop_with_one_clear_line(pump: Path, args: list[str], expected: str) -> None:
    code, output = replay("--csv", str(pump), *PUMP, *ALL_COLUMNS, *args)
    assert code == 2, output
    assert expected in " ".join(output.split()), output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[faults\n", "not valid TOML"),
        ("faults = 3\n", "faults: expected a table"),
        ("[faults.no_such_rule]\n", "--config: faults.no_such_rule: unknown fault rule"),
        ('[[faults.adaptive]]\nsignal = "current"\nraise_treshold = 6\n', "raise_treshold"),
    ],
)
def test_a_bad_config_file_stops_with_one_clear_line(
    pump: Path, tmp_path: Path, text: str, expected: str
) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text(text)
    code, output = replay("--csv", str(pump), *PUMP, *ALL_COLUMNS, "--config", str(agent))
    assert code == 2, output
    assert expected in " ".join(output.split()), output


def test_set_values_are_read_as_toml_values_or_text() -> None:
    assert parse_settings(["raise_samples=3", "raise_threshold=6.5", "direction=up"]) == {
        "raise_samples": 3,
        "raise_threshold": 6.5,
        "direction": "up",
    }
    assert parse_settings(['code="a b"', "keep_warm_after_gap=false"]) == {
        "code": "a b",
        "keep_warm_after_gap": False,
    }
