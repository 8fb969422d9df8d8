"""``fleet-sim bench --device-dir``: the bench's cases on real ``fleet-agent`` processes
with ``DirectorySlots`` against a real Mosquitto (restarts and SIGKILL played like systemd
and a power cut)."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_bundles.build import BuiltBundle
from firmware_bundles.examples import build_examples
from simulator.bench import published_candidate
from simulator.bench_device import _device_case, _Operator, run_device_bench
from tests.conftest import MosquittoBroker

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltBundle]:
    return build_examples(tmp_path_factory.mktemp("bundles"), ("good-1.2.0", "boot-crash"))


def test_good_bundle_passes_on_a_real_agent(
    bundles: dict[str, BuiltBundle], mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    report = run_device_bench(
        bundles["good-1.2.0"].path, tmp_path / "devices", mosquitto.url, hardware=["rev-a"]
    )
    assert report.passed, report.to_dict()
    by_case = {c.case: c for c in report.cases}
    assert set(by_case) == {"install", "power-cut", "network-cut"}
    for case in report.cases:
        assert case.running_version == case.committed_version == "1.2.0"
        assert "exit:75" in case.states  # the update's restart into the new slot
    assert any(s.startswith("killed:") for s in by_case["power-cut"].states)
    assert "resumed" in by_case["network-cut"].detail
    slots = tmp_path / "devices" / "rev-a-install" / "slots"
    assert (slots / "current" / "VERSION").read_text().strip() == "1.2.0"


def test_crash_on_boot_rolls_back_a_real_agent(
    bundles: dict[str, BuiltBundle], mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    operator = _Operator(mosquitto.url)
    try:
        with published_candidate(bundles["boot-crash"].path) as candidate:
            result = _device_case(
                case="install",
                revision="rev-b",
                manifest=candidate.manifest,
                base_url=candidate.base_url,
                root=candidate.root,
                workdir=candidate.work,
                device_dir=tmp_path / "devices",
                broker=mosquitto.url,
                operator=operator,
                simulate_outcomes=True,
            )
    finally:
        operator.close()
    assert not result.passed
    assert result.state == "rolled_back"
    assert result.failure_class == "boot"
    assert result.running_version == result.committed_version == "0.0.1"
    assert "exit:70" in result.states  # the simulated crash, restarted by the bench
