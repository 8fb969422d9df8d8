"""QA bench: put a candidate bundle through the real agent updater before it ships.

``fleet-sim bench BUNDLE`` publishes the candidate in a temporary TUF repository (a
one-key development root that lives only for the run), serves it on loopback with
:mod:`simulator.mirror`, and runs the agent's own :class:`~agent.updater.Updater`
in-process over :class:`~agent.adapters.slots.SimulatedSlots` for every hardware
revision of the bench (by default the revisions the bundle claims): download with the
real TUF client, verification, install, reboot, trial, health check, commit or rollback.

Per revision it runs three cases:

* ``install``: a clean install;
* ``power-cut``: the update is stopped dead in a state picked at random (seeded) and a
  new updater resumes it from the persisted record, as after a power cut;
* ``network-cut``: the mirror drops the connection half-way through the download; the
  agent must resume it.

A case passes when the device ends ``committed`` on the candidate with both slots in
line. Anything else is a failure with the device's reported class and reason (and the
check that the device is back on its old version). The bundle passes when every case
passes. Results go to a table, JUnit XML (``xml.etree``) and JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__ as AGENT_VERSION  # noqa: N812
from agent.adapters.slots import SimulatedSlots
from agent.config import UpdatesConfig
from agent.core.outputs import RunCommand
from agent.updater import PAUSE_ENV, Updater
from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import Manifest
from firmware_bundles.verify import verify_bundle
from protocol import UpdateState

INITIAL_VERSION = "0.0.1"
"""What a bench device runs before the candidate (below any real release)."""
CUT_STATES = ("downloading", "verified", "installing", "installed", "rebooting", "trial")
"""States a power cut can hit."""
CASE_TIMEOUT_S = 60.0


class BenchError(Exception):
    """The bench cannot run (unreadable bundle, no revision to test)."""


@dataclass
class CaseResult:
    """One case on one hardware revision."""

    revision: str
    case: str
    passed: bool
    state: str
    failure_class: str | None = None
    reason: str = ""
    attack: str | None = None
    running_version: str | None = None
    committed_version: str | None = None
    states: list[str] = field(default_factory=list)
    detail: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        """``<revision>/<case>``."""
        return f"{self.revision}/{self.case}"


@dataclass
class BenchReport:
    """Every case and the verdict."""

    bundle: str
    version: str
    claimed: list[str]
    hardware: list[str]
    seed: int
    cases: list[CaseResult]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when every case passed."""
        return bool(self.cases) and all(c.passed for c in self.cases)

    def reasons(self) -> list[str]:
        """One line per distinct failure: ``class (attack): reason [revisions]``."""
        seen: dict[str, list[str]] = {}
        for case in self.cases:
            if case.passed:
                continue
            what = case.failure_class or case.state
            if case.attack:
                what += f"/{case.attack}"
            key = f"{what}: {case.reason or case.detail}"
            seen.setdefault(key, [])
            if case.revision not in seen[key]:
                seen[key].append(case.revision)
        return [f"{key} [{', '.join(revs)}]" for key, revs in seen.items()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "bundle": self.bundle,
            "version": self.version,
            "claimed_revisions": self.claimed,
            "hardware": self.hardware,
            "seed": self.seed,
            "passed": self.passed,
            "reasons": self.reasons(),
            "seconds": round(self.seconds, 2),
            "cases": [asdict(c) | {"name": c.name} for c in self.cases],
        }


class _Host:
    """The daemon side of the updater on the bench: collects what it reports."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.acks: list[tuple[str, bool, str]] = []

    def emit(self, fields: dict[str, Any]) -> None:
        self.events.append(dict(fields))

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        self.acks.append((command_id, ok, detail))

    def server_reachable(self) -> bool:
        return True

    def request_restart(self, reboot: bool) -> None:  # pragma: no cover - restart "none"
        raise RuntimeError("the bench runs updates with restart = none")

    def crash(self) -> None:  # pragma: no cover - restart "none"
        raise RuntimeError("the bench runs updates with restart = none")

    def rolled_back(self) -> None:
        pass


def _settings(base_url: str, root: Path, revision: str, model: str) -> UpdatesConfig:
    return UpdatesConfig(
        enabled=True,
        metadata_url=f"{base_url}/metadata/",
        targets_url=f"{base_url}/targets/",
        root_path=root,
        slots="simulated",
        hardware_revision=revision,
        model=model,
        max_attempts=3,
        health_timeout_s=10,
        restart="none",
        simulate_outcomes=True,
        initial_version=INITIAL_VERSION,
        download_retries=3,
        retry_backoff_s=0.05,
    )


def _install_params(manifest: Manifest, case: str) -> dict[str, Any]:
    return {
        "target": manifest.bundle_filename(),
        "version": manifest.version,
        "execution_id": f"bench-{case}",
    }


def _run_case(
    *,
    case: str,
    revision: str,
    manifest: Manifest,
    base_url: str,
    root: Path,
    workdir: Path,
    cut_state: str | None = None,
    before: Callable[[], None] | None = None,
) -> CaseResult:
    """Run one update on a fresh simulated device; ``cut_state``: power cut there."""
    started = time.monotonic()
    state_dir = workdir / f"{revision}-{case}"
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    settings = _settings(base_url, root, revision, manifest.model)
    slots = SimulatedSlots(INITIAL_VERSION)  # the device's flash: survives the cut
    host = _Host()
    detail = ""
    if before is not None:
        before()
    command = RunCommand("install", f"cmd-{case}", _install_params(manifest, case))
    updater = Updater(settings, state_dir, host, agent_version=AGENT_VERSION, slots=slots)
    if cut_state is None:
        updater.start_install(command)
        finished = updater.wait_idle(CASE_TIMEOUT_S)
    else:
        os.environ[PAUSE_ENV] = cut_state
        try:
            updater.start_install(command)
            marker = state_dir / f"test-paused-{cut_state}"
            deadline = time.monotonic() + CASE_TIMEOUT_S
            while not marker.exists() and updater.busy and time.monotonic() < deadline:
                time.sleep(0.02)
            reached = marker.exists()
            updater.close()  # the power goes: the worker stops where it stands
            updater.wait_idle(CASE_TIMEOUT_S)
        finally:
            os.environ.pop(PAUSE_ENV, None)
        if reached:
            detail = f"power cut in {cut_state}"
            updater = Updater(settings, state_dir, host, agent_version=AGENT_VERSION, slots=slots)
            updater.resume()
        else:
            detail = f"the update ended before reaching {cut_state}; no cut"
        finished = updater.wait_idle(CASE_TIMEOUT_S)
    record = updater.record
    status = slots.status()
    states = [str(UpdateState(e["state"]).value) for e in host.events]
    if not finished:
        detail = f"{detail}; the update did not finish in {CASE_TIMEOUT_S:.0f}s".lstrip("; ")
    committed = (
        record.state is UpdateState.COMMITTED
        and status.running_version == manifest.version
        and status.committed_version == manifest.version
    )
    if record.state in (UpdateState.FAILED, UpdateState.ROLLED_BACK):
        back = status.running_version == INITIAL_VERSION == status.committed_version
        detail = f"{detail}; " if detail else ""
        detail += "device back on its old version" if back else "device NOT back on its old version"
    return CaseResult(
        revision=revision,
        case=case,
        passed=committed and finished,
        state=record.state.value,
        failure_class=record.failure_class.value if record.failure_class else None,
        reason=record.reason,
        attack=record.attack,
        running_version=status.running_version,
        committed_version=status.committed_version,
        states=states,
        detail=detail,
        seconds=round(time.monotonic() - started, 3),
    )


@dataclass
class Candidate:
    """The candidate published in a temporary repository and served on loopback."""

    bundle: Path
    manifest: Manifest
    length: int
    base_url: str
    root: Path
    mirror: Any
    work: Path


@contextmanager
def published_candidate(bundle: Path) -> Iterator[Candidate]:
    """Verify ``bundle``, publish it in a temporary TUF repository (one-key development
    root) and serve that on loopback; everything is removed afterwards.

    Raises:
        BenchError: the bundle cannot be read, verified or published.
    """
    from fleet_server.updates.keys import create_root_keys
    from fleet_server.updates.tuf_repository import PublishError, TufRepository, root_bytes
    from simulator.mirror import serve_mirror

    bundle = Path(bundle)
    try:
        manifest = verify_bundle(bundle)
    except FileNotFoundError:
        raise BenchError(f"{bundle}: no such file") from None
    except BundleError as exc:
        raise BenchError(f"{bundle} is not a valid bundle: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        work = Path(tmp)
        keys = create_root_keys(work / "root-keys", count=1, threshold=1)
        repo = TufRepository.create(
            work / "repo", work / "online-keys", list(keys.signers.values()), threshold=1
        )
        try:
            published = repo.publish(bundle)
        except PublishError as exc:
            raise BenchError(f"cannot publish {bundle.name}: {exc}") from None
        root = work / "root.json"
        root.write_bytes(root_bytes(repo.path))
        with serve_mirror(repo.path) as (base_url, mirror):
            yield Candidate(bundle, manifest, published.length, base_url, root, mirror, work)


CaseRunner = Callable[..., CaseResult]


def run_cases(
    candidate: Candidate,
    revisions: list[str],
    runner: CaseRunner,
    *,
    seed: int,
    progress: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """The three cases per revision with ``runner`` (simulated or real device)."""
    rng = random.Random(seed)
    cases: list[CaseResult] = []
    mirror = candidate.mirror
    half = candidate.length // 2
    for revision in revisions:
        common = {
            "revision": revision,
            "manifest": candidate.manifest,
            "base_url": candidate.base_url,
            "root": candidate.root,
            "workdir": candidate.work / "devices",
        }
        cut_state = rng.choice(CUT_STATES)
        runs = [
            runner(case="install", **common),
            runner(case="power-cut", cut_state=cut_state, **common),
        ]
        mirror.requests.clear()
        runs.append(
            runner(case="network-cut", before=lambda: mirror.cut_next_download(half), **common)
        )
        net = runs[-1]
        resumed = [r for p, r in mirror.requests if "/targets/" in p and r]
        if net.state == "committed" and not resumed:
            net.passed = False
            net.detail = "the download was not resumed after the cut"
        elif net.state == "committed":
            net.detail = f"download cut at {half} bytes and resumed"
        for result in runs:
            cases.append(result)
            if progress is not None:
                progress(result)
    return cases


def run_bench(
    bundle: Path,
    *,
    hardware: list[str] | None = None,
    seed: int = 1,
    progress: Callable[[CaseResult], None] | None = None,
) -> BenchReport:
    """Run every case for every revision of the bench (default: those the bundle claims).

    Raises:
        BenchError: the bundle cannot be read or verified.
    """
    started = time.monotonic()
    with published_candidate(bundle) as candidate:
        manifest = candidate.manifest
        revisions = list(dict.fromkeys(hardware or manifest.hardware_revisions))
        cases = run_cases(candidate, revisions, _run_case, seed=seed, progress=progress)
    return BenchReport(
        bundle=Path(bundle).name,
        version=manifest.version,
        claimed=list(manifest.hardware_revisions),
        hardware=revisions,
        seed=seed,
        cases=cases,
        seconds=time.monotonic() - started,
    )


def junit_xml(report: BenchReport) -> bytes:
    """The report as JUnit XML (one ``testcase`` per revision and case)."""
    failures = sum(1 for c in report.cases if not c.passed)
    suite = ET.Element(
        "testsuite",
        {
            "name": f"fleet-sim bench {report.bundle}",
            "tests": str(len(report.cases)),
            "failures": str(failures),
            "errors": "0",
            "time": f"{report.seconds:.3f}",
        },
    )
    for case in report.cases:
        element = ET.SubElement(
            suite,
            "testcase",
            {
                "classname": f"bench.{report.version}.{case.revision}",
                "name": case.case,
                "time": f"{case.seconds:.3f}",
            },
        )
        if not case.passed:
            what = case.failure_class or case.state
            if case.attack:
                what += f"/{case.attack}"
            failure = ET.SubElement(
                element, "failure", {"message": f"{case.state} ({what}): {case.reason}"[:500]}
            )
            failure.text = json.dumps(asdict(case), indent=2)
        out = ET.SubElement(element, "system-out")
        out.text = " -> ".join(case.states) + (f"\n{case.detail}" if case.detail else "")
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    ET.indent(tree)
    return ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True)


__all__ = [
    "BenchError",
    "BenchReport",
    "Candidate",
    "CaseResult",
    "junit_xml",
    "published_candidate",
    "run_bench",
    "run_cases",
]
