"""``fleet-sim run``: offline runs repeat, files are written, mistakes are one clear line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app
from simulator.fleet_builder import build_fleet
from simulator.scenario import load_scenario
from simulator.server_api import SERVER_CSV_COLUMNS, ServerApi, ServerError, server_csv

SMALL = Path(__file__).resolve().parents[2] / "simulator" / "scenarios" / "small.toml"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", str(SMALL), "--offline", *args])
    return result.exit_code, result.output


def test_offline_run_summary_is_identical_for_the_same_seed(tmp_path: Path) -> None:
    code, first = run("--duration", "2h", "--json")
    assert code == 0, first
    code, again = run("--duration", "2h", "--json", "--factory-csv", str(tmp_path / "f.csv"))
    assert code == 0, again
    a, b = json.loads(first.splitlines()[-1]), json.loads(again.splitlines()[-1])
    assert a["digest"] == b["digest"]
    assert a["samples"] == 10 * 120
    assert a["queued"] == 0
    code, other = run("--duration", "2h", "--json", "--seed", "8")
    assert json.loads(other.splitlines()[-1])["digest"] != a["digest"]
    with (tmp_path / "f.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert rows[0]["device_id"] == "small-00001"


def test_out_writes_every_message_as_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "messages.jsonl"
    code, output = run("--duration", "30m", "--json", "--out", str(out))
    assert code == 0, output
    summary = json.loads(output.splitlines()[-1])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == sum(summary["messages_by_kind"].values())
    assert {line["topic"].rsplit("/", 1)[1] for line in lines} == {
        "telemetry",
        "event",
        "presence",
    }


def test_mistakes_are_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nname = "x"\nseed = 1\nduration = "soon"\n')
    result = CliRunner().invoke(app, ["run", str(bad), "--offline"])
    assert result.exit_code == 2
    assert "scenario.duration" in result.output
    assert "Traceback" not in result.output
    code, output = run("--duration", "-1h")
    assert code == 2
    assert "--duration" in output
    result = CliRunner().invoke(app, ["run", str(SMALL), "--broker", "http://x"])
    assert result.exit_code == 2
    assert "mqtt://host" in result.output


def test_registration_csv_uses_the_server_registry_columns() -> None:
    fleet = build_fleet(load_scenario(SMALL))
    rows = list(csv.DictReader(io.StringIO(server_csv(fleet))))
    assert tuple(rows[0]) == SERVER_CSV_COLUMNS
    assert rows[0]["hw_revision"] == fleet[0].hardware_revision
    assert rows[0]["tags"] == "simulated;tz:Europe/Berlin"


def test_an_unreachable_server_is_a_clear_error() -> None:
    api = ServerApi("http://127.0.0.1:9", "t", timeout=2)
    with pytest.raises(ServerError, match=r"cannot reach http://127\.0\.0\.1:9"):
        api.device_ids("x")
    with pytest.raises(ServerError, match="must start with http://"):
        ServerApi("ftp://x", None)


def test_diagnose_a_simulated_device_from_the_run_output(tmp_path: Path) -> None:
    out = tmp_path / "messages.jsonl"
    code, output = run("--json", "--out", str(out))  # small.toml: small-00003's fan stalls
    assert code == 0, output
    result = CliRunner().invoke(
        app,
        ["diagnose", "small-00003", "--messages", str(out), "--scenario", str(SMALL), "--json"],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ranking"][0]["fault"] == "fan_stall"
    assert body["ranking"][0]["supported"]
    assert {a["code"] for a in body["replayed_alarms"]} >= {"fan_rpm_anomaly"}
    result = CliRunner().invoke(app, ["diagnose", "nobody", "--messages", str(out)])
    assert result.exit_code == 2
    assert "no telemetry of nobody" in result.output
