"""``fleet-sim replay`` and ``diagnose``: recorded signals through the agent's fault engine."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.diagnose import diagnose, read_telemetry_csv
from simulator.hardware import SimulatedHardware
from simulator.hardware_params import Environment, HardwareParams
from simulator.replay import ReplayError, parse_time, read_signal_csv, replay_samples

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP_AT = T0 + 2 * 86400 + 600 * 60  # 2026-01-03T10:00:00Z


def write_signal(path: Path, *, iso: bool, step: float = 8.0, level: float = 45.0) -> None:
    """Three days of a temperature-like signal, one sample a minute, with a daily swing;
    from ``STEP_AT`` on it sits ``step`` higher (well inside any fixed limit)."""
    rng = random.Random(3)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "reading"])
        for i in range(3 * 1440):
            t = T0 + 60 * i
            v = level + 3 * math.sin(2 * math.pi * i / 1440) + rng.gauss(0, 0.3)
            if t >= STEP_AT:
                v += step
            when = (
                dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
                if iso
                else f"{t:.0f}"
            )
            w.writerow([when, f"{v:.2f}"])


def test_replay_raises_a_known_fault_at_the_expected_time(tmp_path: Path) -> None:
    path = tmp_path / "sig.csv"
    write_signal(path, iso=True)
    sig = read_signal_csv(path, time_col="time", value_col="reading", signal="temp_c")
    assert sig.time_format == "iso"
    alarms = replay_samples(sig.rows, sig.name)
    raised = [a for a in alarms if a.event == "raised"]
    assert [a.code for a in raised] == ["temp_c_anomaly"]  # the fixed 80 °C limit stays quiet
    # the step is ~25 noise SDs, far beyond anything the signal showed before: a record,
    # raised on the first sample after the step (no two-sample debounce)
    assert raised[0].ts == STEP_AT
    assert raised[0].time_text == "2026-01-03 10:00:00"
    assert raised[0].iso == "2026-01-03T10:00:00Z"
    assert raised[0].line == 2 + (STEP_AT - T0) / 60


def test_replay_of_a_fixed_limit_fault_uses_the_agents_builtin_rule(tmp_path: Path) -> None:
    path = tmp_path / "sig.csv"
    write_signal(path, iso=False, step=40.0)  # 85 °C and up from the step
    sig = read_signal_csv(path, time_col="time", value_col="reading", signal="temp_c")
    codes = {a.code for a in replay_samples(sig.rows, sig.name) if a.event == "raised"}
    assert {"over_temperature", "temp_c_anomaly"} <= codes
    over = next(a for a in replay_samples(sig.rows, sig.name) if a.code == "over_temperature")
    assert over.ts == STEP_AT + 120  # 3 samples at or above 80 °C
    assert over.time_text == f"{STEP_AT + 120:.0f}"  # the input's own format


def test_replay_cli_prints_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "sig.csv"
    write_signal(path, iso=True)
    result = CliRunner().invoke(
        app,
        ["replay", "--csv", str(path), "--time-col", "time", "--value-col", "reading", "--json"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert lines[0]["event"] == "raised"
    assert lines[0]["code"] == "reading_anomaly"  # an unknown name is a custom signal
    assert lines[0]["time_iso"] == "2026-01-03T10:00:00Z"  # the first sample after the step


def test_bad_rows_are_reported_by_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("time,v\n2026-01-01T00:00:00Z,1\nyesterday,2\n2026-01-01T00:02:00Z,abc\n")
    with pytest.raises(ReplayError) as info:
        read_signal_csv(path, time_col="time", value_col="v")
    assert info.value.errors[0].startswith("line 3, column time: 'yesterday' is not a time")
    assert info.value.errors[1] == "line 4, column v: 'abc' is not a number"
    sig = read_signal_csv(path, time_col="time", value_col="v", skip_bad=True)
    assert len(sig.rows) == 1
    assert len(sig.skipped) == 2

    result = CliRunner().invoke(
        app, ["replay", "--csv", str(path), "--time-col", "time", "--value-col", "v"]
    )
    assert result.exit_code == 2
    assert "line 3, column time" in result.output
    assert "Traceback" not in result.output


def test_missing_columns_files_and_gaps(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_text("t;v\n0;1\n60;\n120;NaN\n180;2\n")  # ';' separated, two gaps
    sig = read_signal_csv(path, time_col="t", value_col="v", signal="fan_rpm")
    assert [r.value for r in sig.rows] == [1.0, None, None, 2.0]
    with pytest.raises(ReplayError, match="no column named 'time'"):
        read_signal_csv(path, time_col="time", value_col="v")
    with pytest.raises(ReplayError, match="cannot read"):
        read_signal_csv(tmp_path / "nope.csv", time_col="t", value_col="v")


def test_time_parsing() -> None:
    assert parse_time("1767225600") == (T0, "unix")
    assert parse_time("2026-01-01T00:00:00Z") == (T0, "iso")
    assert parse_time("2026-01-01 01:00:00+01:00") == (T0, "iso")
    assert parse_time("2026-01-01 00:00:00") == (T0, "iso")  # no offset: UTC
    with pytest.raises(ValueError, match="not a time"):
        parse_time("soon")


def test_diagnose_ranks_a_stalled_fan_first_from_a_telemetry_csv(tmp_path: Path) -> None:
    hw = SimulatedHardware(HardwareParams(), start_time=T0)
    hw.state.temp_c = 40.0
    hw.inject("fan_stall", 1.0, T0 + 6 * 3600)
    path = tmp_path / "tel.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "temp_c", "fan_rpm", "cpu_pct", "mem_pct"])
        for _ in range(12 * 60):
            hw.step(60.0, Environment(ambient_c=25.0, cpu_demand_pct=40.0))
            s = hw.sample()
            w.writerow([s.ts, s.temp_c, s.fan_rpm, s.cpu_pct, s.mem_pct])
    samples = read_telemetry_csv(path)
    report = diagnose("dev-1", samples, ambient=25.0)
    assert report.diagnosis.best is not None
    assert report.diagnosis.best.fault in ("fan_stall", "fan_degradation")
    assert report.diagnosis.best.supported

    result = CliRunner().invoke(
        app, ["diagnose", "dev-1", "--csv", str(path), "--ambient", "25", "--json"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ranking"][0]["fault"] in ("fan_stall", "fan_degradation")
    assert body["samples"] == 12 * 60

    result = CliRunner().invoke(app, ["diagnose", "dev-1"])
    assert result.exit_code == 2
    assert "--server" in result.output
