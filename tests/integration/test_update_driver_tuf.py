"""The update driver over the real python-tuf fetcher and bundle reader, stepped by hand:
a signed repository served on loopback, simulated slots, no agent, no threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.adapters.bundles import BundleFiles
from agent.adapters.slots import SimulatedSlots
from agent.adapters.tuf_fetcher import TufFetcher
from agent.core.outputs import RunCommand
from agent.core.update_flow import UpdateRecord
from agent.update_driver import UpdateDriver
from agent.update_ports import MemoryUpdateStore, UpdatePolicy
from firmware_bundles.examples import build_examples
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository, root_bytes
from protocol import FailureClass
from simulator.mirror import serve_mirror


class Host:
    def __init__(self) -> None:
        self.states: list[str] = []
        self.acks: list[bool] = []

    def emit(self, fields: dict[str, Any]) -> None:
        self.states.append(fields["state"].value)

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        self.acks.append(ok)

    def request_restart(self, reboot: bool) -> None:
        raise AssertionError("boots in place")

    def crash(self) -> None:
        raise AssertionError("no crash expected")

    def rolled_back(self) -> None:
        return None


class Healthy:
    def boot_crashes(self, work: dict[str, Any]) -> bool:
        return False

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        return None


def test_a_signed_bundle_is_fetched_verified_and_committed(tmp_path: Path) -> None:
    bundles = build_examples(tmp_path / "bundles", ("good-1.2.0",))
    keys = create_root_keys(tmp_path / "root-keys", count=1, threshold=1)
    repo = TufRepository.create(
        tmp_path / "site" / "tuf", tmp_path / "online", list(keys.signers.values()), threshold=1
    )
    name = repo.publish(bundles["good-1.2.0"].path).name
    root = root_bytes(repo.path)
    slots = SimulatedSlots("1.0.0")
    host = Host()
    now = 1000.0
    with serve_mirror(tmp_path / "site") as (base_url, _mirror):
        fetcher = TufFetcher(
            tmp_path / "device" / "tuf",
            f"{base_url}/tuf/metadata/",
            f"{base_url}/tuf/targets/",
            tmp_path / "device" / "downloads",
            root=lambda: root,
        )
        driver = UpdateDriver(
            policy=UpdatePolicy(hardware_revision="rev-a", agent_version="1.0.0"),
            store=MemoryUpdateStore(),
            slots=slots,
            fetcher=fetcher,
            bundles=BundleFiles(extract=False),
            trial=Healthy(),
            host=host,
            clock=lambda: now,
        )
        listed = driver.check()
        assert [t["version"] for t in listed["installable"]] == ["1.2.0"]
        params = {"target": name, "version": "1.2.0", "execution_id": "ex-1"}
        wake = driver.start(RunCommand("install", "cmd-1", params), now)
        while wake is not None:
            wake = driver.step(wake)
    assert host.states == [
        "downloading",
        "verified",
        "installing",
        "installed",
        "rebooting",
        "trial",
        "committed",
    ]
    assert host.acks == [True]
    assert slots.status().committed_version == "1.2.0"
