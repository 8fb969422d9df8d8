"""``fleet-sim replay --csv`` with several columns, --rule, --delimiter, and bad files."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simulator.cli import app

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
BREAK_AT = 2000


def write_pump(path: Path, *, delimiter: str = ";", step_s: int = 1) -> None:
    """A pump test bed, one row every ``step_s``: flow and current follow a wandering
    demand; from row ``BREAK_AT`` the current is 1.5 A high for the flow (a clogging
    impeller)."""
    rng = random.Random(7)
    lines = [delimiter.join(["datetime", "flow", "current", "pressure"])]
    for i in range(3000):
        demand = 30 + 5 * math.sin(i / 250.0) + rng.gauss(0, 0.5)
        flow = demand + rng.gauss(0, 0.3)
        current = 0.2 * demand + rng.gauss(0, 0.05) + (1.5 if i >= BREAK_AT else 0.0)
        pressure = 2.0 + 0.01 * demand + rng.gauss(0, 0.02)
        lines.append(
            delimiter.join(
                [str(T0 + step_s * i), f"{flow:.3f}", f"{current:.3f}", f"{pressure:.4f}"]
            )
        )
    path.write_text("\n".join(lines) + "\n")


def replay(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["replay", *args])
    return result.exit_code, result.output


def test_several_columns_feed_the_multivariate_rule(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    write_pump(path)
    code, output = replay(
        "--csv", str(path), "--time-col", "datetime", "--delimiter", ";",
        "--value-col", "flow", "--value-col", "current", "--value-col", "pressure", "--json",
    )  # fmt: skip
    assert code == 0, output
    alarms = [json.loads(line) for line in output.splitlines()]
    raised = [a for a in alarms if a["event"] == "raised"]
    assert [a["code"] for a in raised] == ["multivariate_anomaly"]
    first = raised[0]
    assert T0 + BREAK_AT <= first["ts"] <= T0 + BREAK_AT + 60
    assert first["line"] == 2 + (first["ts"] - T0)
    assert first["drivers"][0]["signal"] == "current"
    assert first["value"] >= first["threshold"]  # T² and the limit it crossed
    assert "driven by current" in first["message"]


def test_rule_all_adds_an_adaptive_rule_per_column_and_text_output(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    write_pump(path, delimiter=",")
    code, output = replay(
        "--csv", str(path), "--time-col", "datetime", "--rule", "all",
        "--value-col", "flow", "--value-col", "current", "--json",
    )  # fmt: skip
    assert code == 0, output
    codes = {json.loads(line)["code"] for line in output.splitlines()}
    assert "multivariate_anomaly" in codes
    assert codes <= {"multivariate_anomaly", "flow_anomaly", "current_anomaly"}
    code, output = replay(
        "--csv", str(path), "--time-col", "datetime",
        "--value-col", "flow", "--value-col", "current",
    )  # fmt: skip
    assert code == 0, output
    assert "samples of flow, current" in output
    assert "1 raised, 0 cleared" in output


def test_one_column_with_signal_feeds_the_adaptive_rule(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    write_pump(path, step_s=60)  # the adaptive rule warms up for hours: one row a minute
    code, output = replay(
        "--csv", str(path), "--time-col", "datetime", "--value-col", "current",
        "--signal", "pump_current", "--json",
    )  # fmt: skip
    assert code == 0, output
    raised = [json.loads(x) for x in output.splitlines() if '"raised"' in x]
    assert [a["code"] for a in raised] == ["pump_current_anomaly"]
    assert raised[0]["ts"] >= T0 + 60 * BREAK_AT
    assert raised[0]["drivers"] == []


@pytest.mark.parametrize(
    ("content", "columns", "expected"),
    [
        (
            "datetime;flow;current\n1767225600;1.0;2.0\n1767225601;1.1;oops\n1767225602;x;2\n",
            ["flow", "current"],
            "line 3, column current: 'oops' is not a number (and 1 more problem(s))",
        ),
        (
            "datetime;flow;current\nsoon;1.0;2.0\n",
            ["flow", "current"],
            "line 2, column datetime: 'soon' is not a time",
        ),
        (
            "datetime;flow\n1767225600;1.0\n",
            ["flow", "current"],
            "line 1: no column named 'current'",
        ),
        (
            "datetime;flow;current\n1767225600;1.0\n",
            ["flow", "current"],
            "line 2: 2 column(s), expected 3",
        ),
    ],
)
def test_a_bad_file_gets_one_error_line_naming_file_line_and_column(
    tmp_path: Path, content: str, columns: list[str], expected: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    args = ["--csv", str(path), "--time-col", "datetime", "--delimiter", ";"]
    for column in columns:
        args += ["--value-col", column]
    code, output = replay(*args)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert str(path) in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in output


def test_option_mistakes_are_one_line_too(tmp_path: Path) -> None:
    path = tmp_path / "pump.csv"
    write_pump(path)
    base = ["--csv", str(path), "--time-col", "datetime"]
    code, output = replay(*base, "--value-col", "flow", "--rule", "multivariate")
    assert code == 2
    assert "needs at least two --value-col" in output
    code, output = replay(*base, "--value-col", "flow", "--value-col", "current", "--signal", "x")
    assert code == 2
    assert "--signal: give one per --value-col" in output
    code, output = replay(*base, "--value-col", "flow", "--rule", "magic")
    assert code == 2
    assert "--rule 'magic' is not one of" in output
    code, output = replay(
        "--csv", str(tmp_path / "nope.csv"), "--time-col", "t", "--value-col", "v"
    )
    assert code == 2
    assert "nope.csv: cannot read" in output
