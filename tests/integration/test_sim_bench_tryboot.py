"""``fleet-sim bench --tryboot``: a whole-image bundle through the real TUF client and the
tryboot slots on a fake Raspberry Pi, with a power cut after every write of the update
and of a rollback, reported in the JUnit output; a bundle for another board fails."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

import simulator.bench_tryboot
from firmware_bundles.examples import build_examples
from simulator.cli import app
from simulator.fake_pi import build_image_bundle


@pytest.fixture(autouse=True)
def one_chunk_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer cut positions (each image one raw write): the matrix stays the same shape."""
    monkeypatch.setattr(simulator.bench_tryboot, "CHUNK", 1 << 20)


def bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["bench", *args, "--tryboot", "--hardware", "rev-a"])
    return result.exit_code, result.output


def test_an_image_bundle_passes_install_power_cuts_and_rollback(tmp_path: Path) -> None:
    bundle = build_image_bundle(tmp_path / "out", "1.5.0")
    junit, report = tmp_path / "bench.xml", tmp_path / "bench.json"
    code, output = bench(str(bundle), "--junit", str(junit), "--json-out", str(report))
    assert code == 0, output
    data = json.loads(report.read_text())
    cases = {c["case"]: c for c in data["cases"]}
    assert set(cases) == {"install", "power-cut", "rollback"}
    assert all(c["passed"] for c in cases.values()), data
    assert cases["install"]["running_version"] == "1.5.0"
    assert cases["rollback"]["state"] == "rolled_back"
    assert cases["rollback"]["running_version"] == "0.0.1"  # the old slot again
    writes = int(cases["power-cut"]["detail"].split()[0])
    assert writes >= 10, cases["power-cut"]["detail"]  # state, raw, autoboot, flag writes
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "0")
    assert [t.get("name") for t in suite.iter("testcase")] == ["install", "power-cut", "rollback"]


def test_a_bundle_for_another_board_fails_and_a_plain_bundle_is_refused(tmp_path: Path) -> None:
    pi5 = build_image_bundle(tmp_path / "out", "1.6.0", raspberry_pi={"models": ["pi5"]})
    code, output = bench(str(pi5))
    assert code == 1, output
    assert "incompatible board: the image is for pi5" in " ".join(output.split())
    plain = build_examples(tmp_path / "plain", ("good-1.2.0",))["good-1.2.0"].path
    code, output = bench(str(plain))
    assert code == 2, output
    assert "carries no rootfs.img" in " ".join(output.split())
