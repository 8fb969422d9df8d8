"""QA bench on whole-image updates: ``fleet-sim bench BUNDLE --tryboot``.

The candidate (a bundle whose payload is ``rootfs.img`` and optionally ``boot.img``) is
published in the bench's temporary TUF repository on loopback (:mod:`simulator.bench`)
and installed by the agent's own update driver, with the real TUF client and bundle
reader, over :class:`~agent.adapters.tryboot.TrybootSlots` on a fake Raspberry Pi
(:mod:`simulator.fake_pi`: a disk image with an MBR and FAT partitions, a model of the
bootloader). The bench plays the board: every reboot the agent asks for, and every power
cut, is a power-on of the fake bootloader followed by a new agent life.

Per hardware revision:

* ``install``: the update, its trial boot and its commit; the board must then boot the
  candidate from the other slot, ``autoboot.txt`` naming it;
* ``power-cut``: the power is cut after every single persistent write of the update in
  turn (the back-end's state file, each raw chunk of the images, ``autoboot.txt`` temp
  and rename, the flag), then the board is powered on and the agent goes on until the
  update settles: every cut must end with the candidate committed and running;
* ``rollback``: the same with a health check that fails: every cut must end back on the
  old slot, committed, without a commit of the candidate.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__ as AGENT_VERSION  # noqa: N812
from agent.adapters.bundles import BundleFiles
from agent.adapters.tryboot import BOOT_IMAGE, ROOTFS_IMAGE, TrybootSlots
from agent.adapters.tryboot_io import Persist
from agent.adapters.tuf_fetcher import TufFetcher
from agent.core.outputs import RunCommand
from agent.core.update_flow import UpdateRecord
from agent.update_driver import UpdateDriver
from agent.update_ports import MemoryUpdateStore, UpdatePolicy
from protocol import FailureClass, UpdateState
from simulator.bench import (
    INITIAL_VERSION,
    BenchError,
    BenchReport,
    Candidate,
    CaseResult,
    published_candidate,
)
from simulator.fake_pi import FakePi

CHUNK = 1 << 17
"""Raw writes of 128 KiB on the bench: each image is several writes, each a cut."""
MAX_LIVES = 12


class PowerCut(Exception):  # noqa: N818 (a simulated event)
    """The power went away right after a persistent write."""


@dataclass
class PiHost:
    """The daemon side of the driver on the bench board: what it reports and asks."""

    events: list[str] = field(default_factory=list)
    acks: list[bool] = field(default_factory=list)
    restarts: list[bool] = field(default_factory=list)

    def emit(self, fields: dict[str, Any]) -> None:
        """Record the reported state."""
        self.events.append(str(UpdateState(fields["state"]).value))

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Record the command's outcome."""
        self.acks.append(ok)

    def request_restart(self, reboot: bool) -> None:
        """The agent asks for the reboot into the trial (the bench then powers on)."""
        self.restarts.append(reboot)

    def crash(self) -> None:
        """A crash on boot is a restart too."""
        self.restarts.append(True)

    def rolled_back(self) -> None:
        """Nothing to do: the committed slot runs from the next power-on."""


class Verdict:
    """The trial's health check: the bundle's own simulated outcome, or forced to fail."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        """Crash on boot when the bundle's simulation says so."""
        return (work.get("simulation") or {}).get("boot") == "crash"

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        """A failing check (forced, or the bundle's simulated outcome), or None."""
        if self.fail or (work.get("simulation") or {}).get("health") == "fail":
            return FailureClass.HEALTH, "health check failed"
        return None


@dataclass
class Device:
    """One bench board: the fake Pi, the agent's persistent documents, the reports."""

    pi: FakePi
    state_dir: Path
    revision: str
    candidate: Candidate
    fail_health: bool
    host: PiHost = field(default_factory=PiHost)
    store: MemoryUpdateStore = field(default_factory=MemoryUpdateStore)

    def agent(self, after_write: Callable[[str], None] | None) -> UpdateDriver:
        """A new agent life on the board (the slots reconcile at their start)."""
        slots = TrybootSlots(
            self.pi.layout(),
            arm=self.pi.arm,
            persist=Persist(after_write, CHUNK, sync=False),
            initial_version=INITIAL_VERSION,
        )
        candidate = self.candidate

        def root() -> bytes:
            return candidate.root.read_bytes()

        fetcher = TufFetcher(
            self.state_dir / "tuf",
            f"{candidate.base_url}/metadata/",
            f"{candidate.base_url}/targets/",
            self.state_dir / "downloads",
            root=root,
        )
        return UpdateDriver(
            policy=UpdatePolicy(
                hardware_revision=self.revision,
                agent_version=AGENT_VERSION,
                model=candidate.manifest.model,
                retry_backoff_s=0.05,
                restart="reboot",
            ),
            store=self.store,
            slots=slots,
            fetcher=fetcher,
            bundles=BundleFiles(extract=True),
            trial=Verdict(self.fail_health),
            host=self.host,
            clock=time.time,
            scratch_dir=self.state_dir / "scratch",
        )


def _run(driver: UpdateDriver, wake: float | None) -> None:
    for _ in range(200):
        if wake is None:
            return
        wake = driver.step(wake)
    raise BenchError("the update driver did not settle")


def settle(device: Device, cut_at: int | None, writes: list[str]) -> UpdateDriver:
    """Install the candidate and keep powering on and starting the agent until the update
    is settled and reported; the power is cut after persistent write ``cut_at`` (once).
    ``writes`` receives every write's label."""

    def after_write(label: str) -> None:
        writes.append(label)
        if cut_at is not None and len(writes) == cut_at + 1:
            raise PowerCut(label)

    manifest = device.candidate.manifest
    params = {
        "target": manifest.bundle_filename(),
        "version": manifest.version,
        "execution_id": "bench-tryboot",
    }
    started = False
    for _life in range(MAX_LIVES):
        restarts = len(device.host.restarts)
        try:
            driver = device.agent(after_write)
            if not started:
                started = True
                _run(driver, driver.start(RunCommand("install", "cmd-bench", params), time.time()))
            else:
                _run(driver, driver.resume(time.time()))
        except PowerCut:
            device.pi.boot()
            continue
        if driver.record.reported:
            return driver
        if len(device.host.restarts) == restarts:
            raise BenchError(f"the agent stopped in {driver.record.state.value} without a reboot")
        device.pi.boot()  # the reboot the agent asked for
    raise BenchError(f"the update did not settle in {MAX_LIVES} power-ons")


def _board(workdir: Path, name: str, model: str) -> tuple[FakePi, Path]:
    where = workdir / name
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    return FakePi(where / "pi", version=INITIAL_VERSION, model=model), where / "agent"


def _outcome(pi: FakePi) -> tuple[str | None, str | None, bool, int | None]:
    """After one more power-on: (running, committed version, in trial, booted partition)."""
    pi.boot()
    status = TrybootSlots(pi.layout(), arm=pi.arm, initial_version=INITIAL_VERSION).status()
    return status.running_version, status.committed_version, status.in_trial, pi.booted


def _one(
    candidate: Candidate, revision: str, model: str, name: str, *, fail: bool, cut: int | None
) -> tuple[Device, UpdateDriver | None, str, list[str]]:
    pi, state = _board(candidate.work / "pi-boards" / revision, name, model)
    device = Device(pi, state, revision, candidate, fail)
    writes: list[str] = []
    try:
        driver: UpdateDriver | None = settle(device, cut, writes)
        error = ""
    except BenchError as exc:
        driver, error = None, str(exc)
    return device, driver, error, writes


def _case(
    candidate: Candidate, revision: str, model: str, case: str, *, fail: bool, matrix: bool
) -> CaseResult:
    """Run the update once (``matrix``: then once per write with a cut there)."""
    started = time.monotonic()
    version = candidate.manifest.version
    want = (INITIAL_VERSION, INITIAL_VERSION) if fail else (version, version)
    device, driver, error, writes = _one(candidate, revision, model, case, fail=fail, cut=None)
    problems: list[str] = [error] if error else []
    record = driver.record if driver is not None else UpdateRecord()
    running, committed, in_trial, _booted = _outcome(device.pi)
    if (running, committed, in_trial) != (*want, False):
        problems.append(f"ended on {running} (committed {committed}), not {want[0]}")
    cuts = len(writes) if matrix else 0
    for cut in range(cuts):
        cut_device, _driver, error, _w = _one(
            candidate, revision, model, f"{case}-{cut}", fail=fail, cut=cut
        )
        running, committed, in_trial, booted = _outcome(cut_device.pi)
        if error or (running, committed, in_trial) != (*want, False) or booted is None:
            error = error or f"ended on {running} (committed {committed}, booted {booted})"
            problems.append(f"power cut after {writes[cut]}: {error}")
    if not problems and not fail:
        problems += _payload_problems(device, candidate)
    detail = f"{len(writes)} writes" + (", a power cut after each of them" if cuts else "")
    ok_state = UpdateState.ROLLED_BACK if fail else UpdateState.COMMITTED
    return CaseResult(
        revision=revision,
        case=case,
        passed=not problems and record.state is ok_state,
        state=record.state.value,
        failure_class=record.failure_class.value if record.failure_class else None,
        reason="; ".join(problems[:3]) or record.reason,
        attack=record.attack,
        running_version=running,
        committed_version=committed,
        states=device.host.events,
        detail=detail,
        seconds=round(time.monotonic() - started, 3),
    )


def _payload_problems(device: Device, candidate: Candidate) -> list[str]:
    """The booted slot's partitions must start with the bundle's images, byte for byte
    (their SHA-256 from the signed manifest)."""
    slot = FakePi.PARTITIONS.get(device.pi.booted or 0, "?")
    problems = []
    for payload in candidate.manifest.payload:
        kind = {ROOTFS_IMAGE: "root", BOOT_IMAGE: "boot"}.get(payload.path)
        if kind is None or slot == "?":
            continue
        region = device.pi.region(kind, slot)
        with open(region.path, "rb") as handle:
            handle.seek(region.offset)
            digest = hashlib.sha256(handle.read(payload.size)).hexdigest()
        if digest != payload.sha256:
            problems.append(f"slot {slot}'s {kind} partition does not hold {payload.path}")
    return problems


def run_tryboot_cases(
    candidate: Candidate,
    revisions: list[str],
    *,
    model: str = "pi4",
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """The install, power-cut and rollback cases for each revision, on a fake ``model``."""
    names = {f.path for f in candidate.manifest.payload}
    if ROOTFS_IMAGE not in names:
        raise BenchError(
            f"{candidate.bundle.name} carries no {ROOTFS_IMAGE}: the tryboot bench needs a "
            "whole-image bundle (payload rootfs.img and optionally boot.img)"
        )
    cases: list[CaseResult] = []
    for revision in revisions:
        for case, fail, matrix in (
            ("install", False, False),
            ("power-cut", False, True),
            ("rollback", True, True),
        ):
            result = _case(candidate, revision, model, case, fail=fail, matrix=matrix)
            cases.append(result)
            if progress is not None:
                progress(result)
    return cases


def run_tryboot_bench(
    bundle: Path,
    *,
    hardware: list[str] | None = None,
    model: str = "pi4",
    progress: Callable[[CaseResult], None] | None = None,
) -> BenchReport:
    """The tryboot cases for every revision of the bench (default: those the bundle
    claims) on a fake ``model`` board.

    Raises:
        BenchError: the bundle cannot be read or verified, or carries no image.
    """
    started = time.monotonic()
    with published_candidate(bundle) as candidate:
        manifest = candidate.manifest
        revisions = list(dict.fromkeys(hardware or manifest.hardware_revisions))
        cases = run_tryboot_cases(candidate, revisions, model=model, progress=progress)
    return BenchReport(
        bundle=Path(bundle).name,
        version=manifest.version,
        claimed=list(manifest.hardware_revisions),
        hardware=revisions,
        seed=0,
        cases=cases,
        seconds=time.monotonic() - started,
    )
