"""The agent's update driver over TrybootSlots and the fake Pi: a real bundle carrying a
root filesystem and a boot partition image is unpacked, streamed into the inactive slot,
booted as a trial through the fake bootloader, then committed or rolled back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.bundles import BundleFiles
from agent.adapters.tryboot import ROOTFS_IMAGE, TrybootSlots
from agent.adapters.tryboot_io import Autoboot, Persist, parse_autoboot
from agent.core.outputs import RunCommand
from agent.core.update_flow import TargetInfo, UpdateRecord
from agent.update_driver import UpdateDriver
from agent.update_ports import FetchedTarget, MemoryUpdateStore, TargetListing, UpdatePolicy
from protocol import FailureClass, UpdateState
from simulator.fake_pi import FakePi, build_image_bundle
from tests.unit.test_update_driver import Host


def image_bundle(out: Path, version: str, **manifest: Any) -> Path:
    """A signed-manifest bundle whose payload is ``rootfs.img`` + ``boot.img``."""
    return build_image_bundle(out / f"out-{version}", version, **manifest)


class OneBundle:
    """A fetcher serving one bundle file from disk."""

    def __init__(self, path: Path, version: str) -> None:
        self.path, self.version = path, version

    def _info(self) -> TargetInfo:
        return TargetInfo(self.version, ("rev-a",), 3, "0", "gw-100")

    def refresh(self) -> None:
        return None

    def target_info(self, name: str) -> FetchedTarget | None:
        return FetchedTarget(name, self._info(), {"length": 1})

    def download(self, target: FetchedTarget) -> Path:
        return self.path

    def verify(self, target: FetchedTarget, path: Path) -> None:
        return None

    def listing(self) -> TargetListing:
        return TargetListing(1, [FetchedTarget("img", self._info())])


class Verdict:
    """The health check's answer."""

    def __init__(self, healthy: bool) -> None:
        self.healthy = healthy

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        return False

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        return None if self.healthy else (FailureClass.HEALTH, "health check failed")


def agent_start(
    pi: FakePi,
    tmp: Path,
    fetcher: OneBundle,
    healthy: bool,
    host: Host,
    store: MemoryUpdateStore,
    hook: Callable[[str], None] | None = None,
) -> UpdateDriver:
    slots = TrybootSlots(
        pi.layout(), arm=pi.arm, persist=Persist(hook, 1 << 17, sync=False), initial_version="1"
    )
    return UpdateDriver(
        policy=UpdatePolicy(
            hardware_revision="rev-a", agent_version="1.0.0", model="gw-100", restart="reboot"
        ),
        store=store,
        slots=slots,
        fetcher=fetcher,
        bundles=BundleFiles(extract=True),
        trial=Verdict(healthy),
        host=host,
        clock=lambda: 1000.0,
        scratch_dir=tmp / "scratch",
    )


def run(driver: UpdateDriver, wake: float | None) -> None:
    for _ in range(100):
        if wake is None:
            return
        wake = driver.step(wake)
    raise AssertionError("the driver did not settle")


def update(tmp: Path, healthy: bool) -> tuple[FakePi, UpdateDriver, Host]:
    pi = FakePi(tmp / "pi")
    fetcher = OneBundle(image_bundle(tmp, "2.0.0"), "2.0.0")
    host, store = Host(), MemoryUpdateStore()
    driver = agent_start(pi, tmp, fetcher, healthy, host, store)
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
    assert driver.record.state is UpdateState.REBOOTING
    assert host.restarts == [True]  # the agent asks for a reboot with the flag set
    assert pi.boot() == 3  # the fake bootloader takes the trial
    driver = agent_start(pi, tmp, fetcher, healthy, host, store)
    run(driver, driver.resume(1000.0))
    return pi, driver, host


def test_an_image_bundle_is_streamed_trialled_and_committed(tmp_path: Path) -> None:
    pi, driver, host = update(tmp_path, healthy=True)
    assert driver.record.state is UpdateState.COMMITTED
    assert [ok for _id, ok, _ in host.acks] == [True]
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(3, 2)
    assert pi.boot() == 3
    assert pi.holds("b", "2.0.0")
    assert pi.holds("a", "1")


def test_a_failing_health_check_boots_the_old_slot_again(tmp_path: Path) -> None:
    pi, driver, host = update(tmp_path, healthy=False)
    assert driver.record.state is UpdateState.ROLLED_BACK
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(2, 3)  # FAT never written
    assert not pi.flag()
    assert pi.boot() == 2
    assert host.rollbacks == 1


def tampered(bundle: Path, out: Path) -> Path:
    """The bundle with one byte of its root filesystem image changed (manifest kept)."""
    import io
    import tarfile

    with tarfile.open(bundle) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and member.name.endswith(ROOTFS_IMAGE):
                data = data[:50] + bytes([data[50] ^ 1]) + data[51:]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_an_image_whose_digest_does_not_match_touches_neither_slot(tmp_path: Path) -> None:
    pi = FakePi(tmp_path / "pi")
    before = (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot())
    bad = tampered(image_bundle(tmp_path, "2.0.0"), tmp_path / "bad.tar.gz")
    host, store = Host(), MemoryUpdateStore()
    driver = agent_start(pi, tmp_path, OneBundle(bad, "2.0.0"), True, host, store)
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
    assert driver.record.state is UpdateState.FAILED
    assert "sha" in (driver.record.reason or "").lower() or "digest" in (driver.record.reason or "")
    assert [ok for _id, ok, _ in host.acks] == [False]
    assert (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot()) == before
    assert not pi.flag()


@pytest.mark.parametrize(
    ("needs", "refusal"),
    [
        ({"models": ["pi5", "cm5"]}, "the image is for pi5, cm5; this board is 'pi4'"),
        (
            {"models": ["pi4"], "min_eeprom": "2026-01-20"},
            "needs a bootloader EEPROM from 2026-01-20 or later; this one is from 2025-08-13",
        ),
    ],
)
def test_an_image_for_another_board_is_refused_before_any_write(
    tmp_path: Path, needs: dict[str, Any], refusal: str
) -> None:
    pi = FakePi(tmp_path / "pi")
    before = (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot())
    bundle = image_bundle(tmp_path, "2.0.0", raspberry_pi=needs)
    host, store = Host(), MemoryUpdateStore()
    driver = agent_start(pi, tmp_path, OneBundle(bundle, "2.0.0"), True, host, store)
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
    assert driver.record.state is UpdateState.FAILED
    assert driver.record.failure_class is FailureClass.VERIFICATION
    assert refusal in driver.record.reason
    assert "2.0.0" not in driver.quarantine  # an EEPROM update may make it fit later
    assert (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot()) == before
    assert not pi.flag()


def test_the_board_check_reads_the_device_tree(tmp_path: Path) -> None:
    from agent.adapters.tryboot_io import board_refusal, read_board

    pi5 = FakePi(tmp_path / "pi5", model="pi5", eeprom=0)
    board = read_board(pi5.root / "dt")
    assert (board.model, board.eeprom) == ("pi5", None)
    assert board_refusal(board, {"models": ["pi5"]}) is None
    assert "does not report its build date" in str(
        board_refusal(board, {"models": ["pi5"], "min_eeprom": "2024-05-13"})
    )
    assert "this board is 'no model" in str(
        board_refusal(read_board(tmp_path), {"models": ["pi4"]})
    )


def test_the_manifest_checks_its_raspberry_pi_block() -> None:
    from firmware_bundles.manifest import ManifestError, RaspberryPi

    assert RaspberryPi(["pi4", "cm5"], "2024-05-13").models == ["pi4", "cm5"]
    with pytest.raises(ManifestError, match="'pi3' is not one of pi4"):
        RaspberryPi(["pi3"])
    with pytest.raises(ManifestError, match="twice"):
        RaspberryPi(["pi4", "pi4"])
    for bad in ("2024-5-13", "13.05.2024", "2024-02-30"):
        with pytest.raises(ManifestError, match="is not a date"):
            RaspberryPi(["pi4"], bad)


class PowerCut(Exception):  # noqa: N818 (a simulated event)
    """The power went away right after a persistent write."""


def agent_until_settled(
    tmp: Path, pi: FakePi, fetcher: OneBundle, healthy: bool, cut_at: int | None, log: list[str]
) -> UpdateDriver:
    """Agent lives and power-ons until the update is settled and reported; the power is
    cut after the ``cut_at``-th persistent write of the tryboot back-end (once)."""

    def hook(label: str) -> None:
        log.append(label)
        if cut_at is not None and len(log) == cut_at + 1:
            raise PowerCut(label)

    host, store = Host(), MemoryUpdateStore()
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    started = False
    for _life in range(10):
        restarts = len(host.restarts)
        try:
            driver = agent_start(pi, tmp, fetcher, healthy, host, store, hook)
            if not started:
                started = True
                run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
            else:
                run(driver, driver.resume(1000.0))
        except PowerCut:
            pi.boot()
            continue
        if driver.record.reported:
            return driver
        assert len(host.restarts) > restarts, driver.record
        pi.boot()  # the reboot the agent asked for
    raise AssertionError("the agent did not settle")


DRIVER_GAP = "state:committing:tmp"
"""A cut after the driver saved ``committed`` but before the back-end saved ``committing``:
the board boots the old slot; the driver re-arms the new slot's trial and commits there."""


def settle_after_cut(tmp: Path, bundle: Path, healthy: bool, cut: int) -> tuple[FakePi, str]:
    """Cut after write ``cut``, let the agent settle, reboot once more; returns the board
    and what its slots then say."""
    pi = FakePi(tmp / f"pi-{cut}")
    agent_until_settled(tmp / f"run-{cut}", pi, OneBundle(bundle, "2.0.0"), healthy, cut, [])
    pi.boot()
    status = TrybootSlots(pi.layout(), arm=pi.arm, initial_version="1").status()
    return pi, f"{status.running_version}/{status.committed_version}/{status.in_trial}"


def bundle_and_writes(tmp: Path, healthy: bool) -> tuple[Path, list[str]]:
    """The image bundle and the back-end's writes in an uninterrupted update."""
    bundle = image_bundle(tmp, "2.0.0")
    nominal: list[str] = []
    pi = FakePi(tmp / "pi-nominal")
    agent_until_settled(tmp / "nominal", pi, OneBundle(bundle, "2.0.0"), healthy, None, nominal)
    return bundle, nominal


@pytest.mark.parametrize("healthy", [True, False])
def test_the_agent_converges_after_a_power_cut_at_every_write(
    tmp_path: Path, healthy: bool
) -> None:
    bundle, nominal = bundle_and_writes(tmp_path, healthy)
    assert len(nominal) >= 10
    want = "2.0.0/2.0.0/False" if healthy else "1/1/False"
    for cut, label in enumerate(nominal):
        pi, outcome = settle_after_cut(tmp_path, bundle, healthy, cut)
        assert outcome == want, label
        assert pi.booted == (3 if healthy else 2), label


def test_a_cut_between_the_driver_commit_and_the_slot_commit(tmp_path: Path) -> None:
    """The driver's ``committed`` is saved, the back-end's commit is not: the old slot
    boots; the agent re-arms the trial of the new slot (the health check passed), commits
    it there and only then reports, once, the commit."""
    bundle, nominal = bundle_and_writes(tmp_path, True)
    pi = FakePi(tmp_path / "pi-gap")
    log: list[str] = []
    driver = agent_until_settled(
        tmp_path / "gap", pi, OneBundle(bundle, "2.0.0"), True, nominal.index(DRIVER_GAP), log
    )
    assert driver.record.state is UpdateState.COMMITTED
    assert driver.work["recommit_attempts"] == 1
    assert log.count("flag:set") == 2  # the trial, and the trial re-armed after the cut
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(3, 2)
    pi.boot()
    status = TrybootSlots(pi.layout(), arm=pi.arm, initial_version="1").status()
    assert (status.running_version, status.committed_version, status.in_trial) == (
        "2.0.0",
        "2.0.0",
        False,
    )


class CutDuringCheck(Verdict):
    """The power goes during the first health check (a false rollback without retries)."""

    def __init__(self) -> None:
        super().__init__(True)
        self.checks = 0

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        self.checks += 1
        if self.checks == 1:
            raise PowerCut("during the health check")
        return None


def test_a_power_cut_during_the_trial_tries_the_new_slot_again(tmp_path: Path) -> None:
    pi = FakePi(tmp_path / "pi")
    fetcher = OneBundle(image_bundle(tmp_path, "2.0.0"), "2.0.0")
    host, store, verdict = Host(), MemoryUpdateStore(), CutDuringCheck()
    driver = agent_start(pi, tmp_path, fetcher, True, host, store)
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
    for _ in range(6):
        pi.boot()
        driver = agent_start(pi, tmp_path, fetcher, True, host, store)
        driver.trial = verdict
        try:
            run(driver, driver.resume(1000.0))
        except PowerCut:
            continue
        if driver.record.reported:
            break
    assert driver.record.state is UpdateState.COMMITTED
    assert driver.record.attempts["trial"] == 1
    assert verdict.checks == 2
    states = [e["state"].value for e in host.events]
    assert states.count("rebooting") == 2  # the trial, and the trial again after the cut
    assert pi.boot() == 3


def test_a_committed_version_that_never_boots_again_ends_rolled_back(tmp_path: Path) -> None:
    """The re-armed trials keep coming back on the old slot (the new one stopped booting):
    after ``max_attempts`` the update ends ``rolled_back`` on the old slot, which stays
    committed."""
    pi = FakePi(tmp_path / "pi")
    fetcher = OneBundle(image_bundle(tmp_path, "2.0.0"), "2.0.0")
    host, store = Host(), MemoryUpdateStore()

    def cut_once(label: str) -> None:
        if label == DRIVER_GAP and not host.acks and len(host.restarts) == 1:
            raise PowerCut(label)

    driver = agent_start(pi, tmp_path, fetcher, True, host, store, cut_once)
    params = {"target": "img", "version": "2.0.0", "execution_id": "ex-1"}
    run(driver, driver.start(RunCommand("install", "cmd-1", params), 1000.0))
    assert pi.boot() == 3
    driver = agent_start(pi, tmp_path, fetcher, True, host, store, cut_once)
    with pytest.raises(PowerCut):
        run(driver, driver.resume(1000.0))
    pi.write_at("boot", "b", b"broken" * 100)  # slot b no longer boots
    for _ in range(10):
        assert pi.boot() == 2
        driver = agent_start(pi, tmp_path, fetcher, True, host, store)
        run(driver, driver.resume(1000.0))
        if driver.record.reported:
            break
    assert driver.record.state is UpdateState.ROLLED_BACK
    assert "giving up" in driver.record.reason
    assert [ok for _id, ok, _ in host.acks] == [False]
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(2, 3)
    assert pi.boot() == 2
