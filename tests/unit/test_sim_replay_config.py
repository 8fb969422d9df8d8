"""``fleet-sim replay --config`` (the device's own fault rules) and ``--set`` (tuning the
rules the replay adds), with the errors a technician sees for bad ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.replay_rules import parse_settings
from tests.unit.test_sim_replay_columns import BREAK_AT, T0, write_pump

PUMP = ["--time-col", "datetime", "--delimiter", ";"]
ALL_COLUMNS = ["--value-col", "flow", "--value-col", "current", "--value-col", "pressure"]


@pytest.fixture
def pump(tmp_path: Path) -> Path:
    path = tmp_path / "pump.csv"
    write_pump(path)
    return path


def replay(*args: str) -> tuple[int, str]:
    """Exit code and what the user reads: the alarms (stdout) after the notes (stderr)."""
    result = CliRunner().invoke(app, ["replay", *args])
    return result.exit_code, result.stdout + result.stderr


def replay_json(*args: str) -> tuple[list[dict[str, object]], list[str]]:
    """The raises (``--json`` on stdout) and the notes (stderr) of a replay that works."""
    result = CliRunner().invoke(app, ["replay", *args, "--json"])
    assert result.exit_code == 0, result.output
    return raised(result.stdout), result.stderr.splitlines()


def raised(output: str) -> list[dict[str, object]]:
    alarms = [json.loads(line) for line in output.splitlines()]
    return [a for a in alarms if a["event"] == "raised"]


def test_set_tunes_the_rule_the_replay_adds(pump: Path) -> None:
    alarms, notes = replay_json(
        "--csv", str(pump), *PUMP, *ALL_COLUMNS,
        "--set", "code=pump_bed", "--set", "severity=minor",
    )  # fmt: skip
    [alarm] = alarms
    assert (alarm["code"], alarm["severity"]) == ("pump_bed", "minor")
    assert notes == ["added multivariate rule pump_bed"]
    assert T0 + BREAK_AT <= alarm["ts"] <= T0 + BREAK_AT + 60


def test_set_routes_a_setting_to_the_rule_that_has_it(tmp_path: Path) -> None:
    """``--rule all``: ``direction`` belongs to the adaptive rule only; watching for
    downward departures silences the adaptive rule on the current's upward step and
    leaves the multivariate rule as it is. (A row every 10 s: the step comes after the
    adaptive rule's warm-up.)"""
    pump = tmp_path / "pump.csv"
    write_pump(pump, step_s=10)
    args = ["--csv", str(pump), *PUMP, *ALL_COLUMNS, "--rule", "all"]
    alarms, _ = replay_json(*args)
    assert {"current_anomaly", "multivariate_anomaly"} <= {a["code"] for a in alarms}
    alarms, _ = replay_json(*args, "--set", "direction=down")
    codes = {a["code"] for a in alarms}
    assert "multivariate_anomaly" in codes
    assert "current_anomaly" not in codes


def test_a_prefixed_setting_reaches_one_rule_and_a_bare_threshold_is_refused(
    tmp_path: Path,
) -> None:
    """The two rules' thresholds differ in scale (robust SDs against a T² limit): with both
    added, ``multivariate.raise_threshold`` tunes the multivariate rule alone."""
    pump = tmp_path / "pump.csv"
    write_pump(pump, step_s=10)
    args = ["--csv", str(pump), *PUMP, *ALL_COLUMNS, "--rule", "all"]
    alarms, _ = replay_json(
        *args,
        "--set",
        "multivariate.raise_threshold=1e9",
        "--set",
        "multivariate.clear_threshold=1",
    )
    codes = {a["code"] for a in alarms}
    assert "current_anomaly" in codes  # the adaptive rules keep their own thresholds
    assert "multivariate_anomaly" not in codes
    code, output = replay(*args, "--set", "raise_threshold=6")
    assert code == 2, output
    assert "say adaptive.raise_threshold or multivariate.raise_threshold" in output


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
    alarms, notes = replay_json(
        "--csv", str(pump), *PUMP, *ALL_COLUMNS, "--rule", "all", "--config", str(agent)
    )
    # The configured multivariate rule replaces the replay's own (its code and severity);
    # the configured adaptive rule on current (never raising) replaces the replay's
    # default one on that signal; flow and pressure get the replay's own.
    assert [(a["code"], a["severity"]) for a in alarms] == [("bed_relation", "critical")]
    assert notes == [
        "configured rule current_level watches current",
        "configured rule bed_relation watches flow, current, pressure",
        "added adaptive rule flow_anomaly",
        "added adaptive rule pressure_anomaly",
    ]


def test_a_configured_rule_on_a_signal_the_recording_lacks_is_named(
    pump: Path, tmp_path: Path
) -> None:
    """It can never score here, so it does not stand in for the replay's own rule."""
    agent = tmp_path / "agent.toml"
    agent.write_text(
        '[[faults.multivariate]]\nsignals = ["flow", "current", "pressure", "temp_c"]\n'
        'code = "bed_and_room"\n'
    )
    alarms, notes = replay_json("--csv", str(pump), *PUMP, *ALL_COLUMNS, "--config", str(agent))
    assert [a["code"] for a in alarms] == ["multivariate_anomaly"]
    assert notes == [
        "configured rule bed_and_room watches temp_c, which the recording lacks: it never "
        "scores here",
        "added multivariate rule multivariate_anomaly",
    ]


def test_an_added_rule_whose_default_code_a_configured_rule_has_gets_another(
    pump: Path, tmp_path: Path
) -> None:
    """A configured multivariate rule without a code, over signals the recording lacks,
    has the replay's own default code: the replay ran nothing ("two fault rules have the
    code 'multivariate_anomaly'") instead of adding its own under another code."""
    agent = tmp_path / "agent.toml"
    agent.write_text('[[faults.multivariate]]\nsignals = ["temp_c", "fan_rpm"]\n')
    args = ["--csv", str(pump), *PUMP, *ALL_COLUMNS, "--config", str(agent)]
    alarms, notes = replay_json(*args)
    assert [a["code"] for a in alarms] == ["multivariate_anomaly_replay"]
    assert notes[-1] == "added multivariate rule multivariate_anomaly_replay"
    code, output = replay(*args, "--set", "code=multivariate_anomaly")
    assert code == 2, output
    assert "--set code: the configuration already has a rule multivariate_anomaly" in output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--set", "raise_treshold=6"],
            "--set raise_treshold: not a setting of the adaptive or the multivariate rule "
            "(did you mean raise_threshold",
        ),
        (["--set", "raise_threshold"], "--set 'raise_threshold': expected name=value"),
        (["--set", "raise_threshold=6,5"], "--set raise_threshold: '6,5' is not a value"),
        (["--set", 'raise_threshold="6"'], "--set raise_threshold: '\"6\"' is not a value"),
        (["--set", "warmup_samples=[30]"], "--set warmup_samples: '[30]' is not a value"),
        (["--set", "raise_threshold=-1"], "--set (multivariate rule): "),
        (
            ["--set", "direction=down"],
            "--set direction: it would change nothing: only the adaptive rule takes it and "
            "--rule multivariate adds none here",
        ),
        (
            ["--rule", "all", "--set", "code=bed"],
            "--set code: the replay adds 4 rules here and a code names one",
        ),
        (["--config", "missing.toml"], "missing.toml: cannot read"),
        (["--set", "bogus.raise_threshold=6"], "'bogus' is not a rule (adaptive or multivariate)"),
        (
            ["--set", "multivariate.direction=up"],
            "--set multivariate.direction: not a setting of the multivariate rule",
        ),
    ],
)
def test_bad_settings_stop_with_one_clear_line(pump: Path, args: list[str], expected: str) -> None:
    code, output = replay("--csv", str(pump), *PUMP, *ALL_COLUMNS, *args)
    assert code == 2, output
    assert output.startswith("fleet-sim: "), output
    assert expected in output, output
    assert output.strip().count("\n") == 0, output


def test_a_setting_for_columns_the_configuration_already_watches_is_refused(
    pump: Path, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.toml"
    agent.write_text('[[faults.multivariate]]\nsignals = ["flow", "current", "pressure"]\n')
    code, output = replay(
        "--csv", str(pump), *PUMP, *ALL_COLUMNS, "--config", str(agent),
        "--set", "raise_threshold=4",
    )  # fmt: skip
    assert code == 2, output
    assert "the configuration already watches every column (edit it instead)" in output


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
    assert expected in output, output
    assert output.strip().count("\n") == 0, output


def test_set_values_are_toml_values_and_text_settings_are_taken_as_written() -> None:
    assert parse_settings(["raise_samples=3", "raise_threshold=6.5", "direction=up"]) == {
        "raise_samples": 3,
        "raise_threshold": 6.5,
        "direction": "up",
    }
    assert parse_settings(["code=123", "severity=minor", "keep_warm_after_gap=false"]) == {
        "code": "123",
        "severity": "minor",
        "keep_warm_after_gap": False,
    }
