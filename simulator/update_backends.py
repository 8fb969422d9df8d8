"""Updates on simulated devices: the agent's own update driver over simulated back-ends.

Nothing here decides how an update goes: every :class:`~simulator.device.SimDevice` runs
the agent's :class:`~agent.update_driver.UpdateDriver` (the handler table beside the update
flow's transition and restart tables). This module only supplies what a simulated device
has instead of real hardware and a real network:

* target sources: :class:`StaticTargets` (offline runs, tests) and :class:`TufTargets`
  (the server's ``/tuf/`` routes through the agent's real TUF client, verified once per
  process and shared by its devices), behind the driver's fetcher and bundle-reader ports
  (:class:`SimulatedTargets`);
* simulated outcomes (:class:`SimulatedOutcomes`): the bundle manifest's ``simulation``
  block makes the new slot crash on boot or fail its health check (``fail_on_hardware``);
* simulated timing (:class:`UpdateTiming`): how long each phase takes in simulated time;
* the wiring (:class:`DeviceUpdates`): the driver attached to a device, with the device's
  outbox as its host, ``SimulatedSlots`` as its slots and the device's disk as its store.

The update record, quarantine list and release counter live on the device's "disk": a
power cut in the middle of an update is resolved at the next boot by the driver's
restart handling, as on a real device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.core.commands import Decision
from agent.core.outputs import RunCommand
from agent.core.update_flow import TargetInfo, UpdateRecord
from agent.update_driver import UpdateDriver
from agent.update_ports import (
    BundleContents,
    BundleRefusedError,
    FetchedTarget,
    FetchError,
    MemoryUpdateStore,
    TargetListing,
    UpdatePolicy,
)
from protocol import FailureClass, Install, RebootReason, UpdateState

if TYPE_CHECKING:
    from simulator.device import SimDevice

SIM_AGENT_VERSION = "1.0.0"
"""The agent version simulated devices announce to the target checks."""


@dataclass(frozen=True, slots=True)
class UpdateTiming:
    """How long each phase takes on a simulated device (simulated seconds)."""

    download_s: float = 60.0
    install_s: float = 60.0
    reboot_s: float = 30.0
    trial_s: float = 120.0

    def scaled(self, factor: float) -> UpdateTiming:
        """Every phase ``factor`` times as long (fast demos use < 1)."""
        return UpdateTiming(
            self.download_s * factor,
            self.install_s * factor,
            self.reboot_s * factor,
            self.trial_s * factor,
        )

    def delays(self) -> dict[str, float]:
        """The driver's phase delays: the time each state's work takes before it is done."""
        return {
            UpdateState.DOWNLOADING.value: self.download_s,
            UpdateState.INSTALLING.value: self.install_s,
            UpdateState.INSTALLED.value: self.reboot_s,
            UpdateState.TRIAL.value: self.trial_s,
        }


@dataclass(frozen=True, slots=True)
class TargetDetails:
    """What a device learns about a target: signed metadata and simulated behaviour."""

    info: TargetInfo
    simulation: dict[str, Any] = field(default_factory=dict)


class TargetSource(Protocol):
    """Where a simulated device gets a target's metadata and bundle behaviour."""

    def fetch(self, target: str) -> TargetDetails:
        """Download and verify ``target``; raise :class:`~agent.update_ports.FetchError`
        when it cannot be had."""
        ...


class StaticTargets:
    """Targets known in advance (offline runs, tests): name -> :class:`TargetDetails`."""

    def __init__(self, targets: dict[str, TargetDetails] | None = None) -> None:
        self.targets = dict(targets or {})

    def add(self, name: str, details: TargetDetails) -> None:
        """Make ``name`` available."""
        self.targets[name] = details

    def fetch(self, target: str) -> TargetDetails:
        """The stored details, or a verification failure for an unknown target."""
        try:
            return self.targets[target]
        except KeyError:
            raise FetchError(
                FailureClass.VERIFICATION,
                f"target {target} is not in the signed targets metadata",
            ) from None


class TufTargets:
    """Targets from the fleet server's update repository, fetched and verified with the
    agent's real TUF client (:class:`agent.adapters.tuf_client.UpdateClient`).

    The first device that needs a target refreshes the signed metadata, downloads the
    bundle (length and hashes checked by python-tuf) and reads its manifest; the verified
    result is shared with the other simulated devices of the process (one download per
    target, not per device: the simulator runs many devices on one machine). Failures are
    not cached: the next device tries again.
    """

    def __init__(self, base_url: str, root: bytes, workdir: Path) -> None:
        self.metadata_url = base_url.rstrip("/") + "/tuf/metadata/"
        self.targets_url = base_url.rstrip("/") + "/tuf/targets/"
        self.root = root
        self.workdir = Path(workdir)
        self._cache: dict[str, TargetDetails] = {}
        self.downloads = 0

    def fetch(self, target: str) -> TargetDetails:
        """The verified details of ``target`` (raises :class:`FetchError`)."""
        cached = self._cache.get(target)
        if cached is not None:
            return cached
        from agent.adapters.bundles import BundleFiles
        from agent.adapters.tuf_fetcher import TufFetcher

        fetcher = TufFetcher(
            self.workdir / "metadata",
            self.metadata_url,
            self.targets_url,
            self.workdir,
            root=lambda: self.root,
        )
        try:
            fetcher.refresh()
            found = fetcher.target_info(target)
            if found is None:
                raise FetchError(
                    FailureClass.VERIFICATION,
                    f"target {target} is not in the signed targets metadata",
                )
            contents = BundleFiles(extract=False).read(fetcher.download(found), None)
        except FetchError as exc:  # not retried: the next device tries again
            raise FetchError(exc.failure_class, exc.reason, exc.attack) from None
        except BundleRefusedError as exc:
            raise FetchError(FailureClass.INSTALL, f"bundle refused: {exc}") from None
        except OSError as exc:
            raise FetchError(
                FailureClass.DOWNLOAD, f"cannot reach the update repository: {exc}"
            ) from None
        details = TargetDetails(found.info, dict(contents.simulation or {}))
        self._cache[target] = details
        self.downloads += 1
        return details


def details_from_manifest(manifest: dict[str, Any], channel: str | None = None) -> TargetDetails:
    """Target details from a bundle manifest (as JSON data), e.g. the server's catalogue."""
    return TargetDetails(
        TargetInfo(
            str(manifest["version"]),
            tuple(manifest.get("hardware_revisions") or ()),
            int(manifest.get("release_counter") or 0),
            str(manifest.get("min_agent_version") or "0"),
            manifest.get("model"),
        ),
        dict(manifest.get("simulation") or {}),
    )


class SimulatedTargets:
    """A :class:`TargetSource` as the driver's fetcher and bundle reader: the "download"
    is the source's verified details, the "bundle" their simulated behaviour."""

    def __init__(self, source: TargetSource) -> None:
        self.source = source

    def refresh(self) -> None:
        """Nothing to refresh: the source verifies when a target is asked for."""

    def target_info(self, name: str) -> FetchedTarget | None:
        """The target's signed details; None when the source does not know it."""
        if isinstance(self.source, StaticTargets) and name not in self.source.targets:
            return None
        return FetchedTarget(name, self.source.fetch(name).info)

    def download(self, target: FetchedTarget) -> Path:
        """Nothing to write: the target's name stands for the bundle."""
        return Path(target.name)

    def verify(self, target: FetchedTarget, path: Path) -> None:
        """A simulated download never changes."""

    def listing(self) -> TargetListing:
        """The known targets (static sources only)."""
        if isinstance(self.source, StaticTargets):
            named = self.source.targets.items()
            return TargetListing(1, [FetchedTarget(n, d.info) for n, d in named])
        return TargetListing(0, [])

    def read(self, bundle: Path, staging: Path | None) -> BundleContents:
        """The bundle's manifest as the source described it."""
        details = self.source.fetch(str(bundle))
        return BundleContents(
            details.info.version,
            details.info.hardware_revisions,
            None,
            dict(details.simulation),
        )


class SimulatedOutcomes:
    """The trial of a simulated device: the bundle's ``simulation`` block decides."""

    def __init__(self, hardware_revision: str) -> None:
        self.hardware_revision = hardware_revision

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        """``simulation.boot = "crash"``: the new slot dies on every boot."""
        return (work.get("simulation") or {}).get("boot") == "crash"

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        """``simulation.health = "fail"`` or this revision in ``fail_on_hardware``."""
        simulation = work.get("simulation") or {}
        if simulation.get("health") == "fail":
            return FailureClass.HEALTH, "health check failed (bundle's simulated outcome)"
        if self.hardware_revision in (simulation.get("fail_on_hardware") or []):
            return FailureClass.HEALTH, (
                f"health check failed on {self.hardware_revision} (simulated outcome)"
            )
        return None


class _DeviceHost:
    """A simulated device as the driver's host: reports go through its agent core and
    outbox; a restart is a reboot of the simulated hardware."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue the ``UpdateStateChanged`` event in the device's outbox."""
        device = self.device
        assert device.core is not None
        device.apply(device.core.update_state(device.device_time(), **fields))

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Queue the install command's final ack."""
        device = self.device
        assert device.core is not None
        device.apply(
            device.core.command_result(
                command_id, device.device_time(), ok=ok, detail=detail, result=result
            )
        )

    def request_restart(self, reboot: bool) -> None:
        """Reboot into the switched slot."""
        self.device.reboot(RebootReason.FIRMWARE_UPDATE)

    def crash(self) -> None:
        """A simulated device cannot die here: the driver plays the crash loop."""

    def rolled_back(self) -> None:
        """Reboot into the known-good slot."""
        self.device.reboot(RebootReason.UPDATE_ROLLBACK)


class DeviceUpdates:
    """The agent's update driver on one simulated device: :meth:`attach` it (its
    ``install`` runner and boot hook); the device steps it as simulated time passes."""

    def __init__(
        self,
        source: TargetSource,
        *,
        hardware_revision: str,
        model: str | None = None,
        timing: UpdateTiming | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.source = source
        self.hardware_revision = hardware_revision
        self.model = model
        self.timing = timing or UpdateTiming()
        self.max_attempts = max_attempts
        self.store = MemoryUpdateStore()
        """The device's disk: survives reboots."""
        self.driver: UpdateDriver | None = None

    @property
    def record(self) -> UpdateRecord:
        """The driver's update record."""
        return self.driver.record if self.driver is not None else UpdateRecord()

    @property
    def quarantine(self) -> list[str]:
        """Versions that failed on this device."""
        return self.driver.quarantine if self.driver is not None else []

    def attach(self, device: SimDevice) -> None:
        """Install the driver on ``device`` (its ``install`` runner and boot hook)."""
        targets = SimulatedTargets(self.source)
        self.driver = UpdateDriver(
            policy=UpdatePolicy(
                hardware_revision=self.hardware_revision,
                agent_version=SIM_AGENT_VERSION,
                model=self.model,
                max_attempts=self.max_attempts,
                download_retries=0,
                restart="reboot",
                phase_delay_s=self.timing.delays(),
            ),
            store=self.store,
            slots=device.slots,
            fetcher=targets,
            bundles=targets,
            trial=SimulatedOutcomes(self.hardware_revision),
            host=_DeviceHost(device),
            clock=device.device_time,
        )
        device.runners["install"] = self.run
        device.extensions.append(self)
        self.on_boot(device, device.t)

    def _decide(self, cmd: Install) -> Decision:
        assert self.driver is not None
        return self.driver.decide_install(cmd)

    def run(self, device: SimDevice, cmd: RunCommand, t: float) -> None:
        """Runner for an accepted ``install``: the driver enters ``downloading``."""
        assert self.driver is not None
        self.driver.start(cmd, t)

    def on_boot(self, device: SimDevice, t: float) -> None:
        """After a start: register the intake handler, resume a persisted update."""
        if device.core is None or self.driver is None:
            return
        device.core.intake.register(Install, self._decide)
        self.driver.resume(t)

    def step(self, device: SimDevice, t: float) -> None:
        """Run the driver's handlers due by ``t`` (the device is running)."""
        if self.driver is not None and device.core is not None:
            self.driver.step(t)

    def next_due(self) -> float | None:
        """When the driver next has work (None: nothing running)."""
        return self.driver.due if self.driver is not None else None


__all__ = [
    "SIM_AGENT_VERSION",
    "DeviceUpdates",
    "SimulatedOutcomes",
    "SimulatedTargets",
    "StaticTargets",
    "TargetDetails",
    "TargetSource",
    "TufTargets",
    "UpdateTiming",
    "details_from_manifest",
]
