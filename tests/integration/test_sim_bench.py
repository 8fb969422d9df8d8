"""``fleet-sim bench``: the real agent updater, a temporary TUF repository on loopback,
power and network cuts; good bundles pass, each bad one fails with its own reason."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from firmware_bundles.build import BuiltBundle
from firmware_bundles.examples import build_examples
from simulator.bench import run_bench
from simulator.cli import app


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltBundle]:
    return build_examples(tmp_path_factory.mktemp("bundles"))


def test_good_bundle_passes_every_case_with_junit_and_json(
    bundles: dict[str, BuiltBundle], tmp_path: Path
) -> None:
    junit, report = tmp_path / "bench.xml", tmp_path / "bench.json"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            str(bundles["good-1.2.0"].path),
            "--junit",
            str(junit),
            "--json-out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] is True
    cases = {(c["revision"], c["case"]) for c in data["cases"]}
    assert cases == {
        (rev, case)
        for rev in ("rev-a", "rev-b")
        for case in ("install", "power-cut", "network-cut")
    }
    for case in data["cases"]:
        assert case["state"] == "committed"
        assert case["running_version"] == case["committed_version"] == "1.2.0"
    cut = [c for c in data["cases"] if c["case"] == "network-cut"]
    assert all("resumed" in c["detail"] for c in cut)
    power = [c for c in data["cases"] if c["case"] == "power-cut"]
    assert all(c["detail"].startswith("power cut in ") for c in power)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("tests") == "6"
    assert suite.get("failures") == "0"


@pytest.mark.parametrize(
    ("example", "state", "failure", "attack"),
    [
        ("health-fail", "rolled_back", "health", None),
        ("boot-crash", "rolled_back", "boot", None),
        ("wrong-hardware", "failed", "security", "wrong_hardware"),
    ],
)
def test_bad_bundles_fail_with_their_reason_and_devices_keep_the_old_version(
    bundles: dict[str, BuiltBundle],
    example: str,
    state: str,
    failure: str,
    attack: str | None,
) -> None:
    # the bench's devices are the fleet's revisions; wrong-hardware claims rev-z only
    report = run_bench(bundles[example].path, hardware=["rev-a", "rev-b"], seed=3)
    assert not report.passed
    assert len(report.cases) == 6
    for case in report.cases:
        assert case.state == state, case
        assert case.failure_class == failure
        assert case.attack == attack
        assert case.running_version == case.committed_version == "0.0.1"
        assert "device back on its old version" in case.detail
    assert all(line.startswith(failure) for line in report.reasons())


def test_bench_exit_codes(bundles: dict[str, BuiltBundle], tmp_path: Path) -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", str(bundles["boot-crash"].path), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.stdout.strip().splitlines()[-1])["reasons"][0].startswith("boot")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a bundle")
    broken = runner.invoke(app, ["bench", str(junk)])
    assert broken.exit_code == 2
    assert "not a valid bundle" in broken.output
