"""Simulated updates: the agent's update flow on a :class:`~simulator.device.SimDevice`.

:class:`SimUpdater` is the simulator's counterpart of ``agent/updater.py``: the same pure
core (``agent.core.update_flow``: transition table, restart table, target checks,
quarantine, install refusal) over :class:`~agent.adapters.slots.SimulatedSlots`, but
without a thread: each phase takes simulated time (:class:`UpdateTiming`) and moves on
when the device is advanced past its due time (``SimDevice.advance_to``). Every
transition is reported as an ``UpdateStateChanged`` event with the execution id, through
the device's outbox, and the ``Install`` command gets its final ack.

What the target is and how it behaves comes from a :class:`TargetSource`: the signed TUF
custom metadata plus the bundle manifest's ``simulation`` block (boot crash, health
failure, ``fail_on_hardware``, ``fault_rate_multiplier``). :class:`StaticTargets` serves
them from memory (offline runs, tests); a live source can fetch them from the server's
``/tuf/`` routes with the real TUF client.

The update record, quarantine list and release counter live on the device's "disk": a
power cut in the middle of an update is resolved at the next boot by
:func:`~agent.core.update_flow.on_restart`, as on a real device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.core.commands import Decision, accept, reject
from agent.core.outputs import RunCommand
from agent.core.update_flow import (
    ACTIVE_STATES,
    SECURITY_CHECKS,
    TERMINAL_STATES,
    RestartAction,
    TargetInfo,
    UpdateEvent,
    UpdateRecord,
    apply,
    check_target,
    install_refusal,
    on_restart,
)
from protocol import FailureClass, Install, RebootReason, UpdateState

if TYPE_CHECKING:
    from simulator.device import SimDevice

U = UpdateState
E = UpdateEvent

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


@dataclass(frozen=True, slots=True)
class TargetDetails:
    """What a device learns about a target: signed metadata and simulated behaviour."""

    info: TargetInfo
    simulation: dict[str, Any] = field(default_factory=dict)


class TargetUnavailableError(Exception):
    """The target could not be fetched or verified (an update failure, not a crash)."""

    def __init__(self, failure_class: FailureClass, reason: str, attack: str | None = None) -> None:
        super().__init__(reason)
        self.failure_class = failure_class
        self.reason = reason
        self.attack = attack


class TargetSource(Protocol):
    """Where a simulated device gets a target's metadata and bundle behaviour."""

    def fetch(self, target: str, device: SimDevice) -> TargetDetails:
        """Download and verify ``target`` for ``device``; raise
        :class:`TargetUnavailableError` when it cannot be had."""
        ...


class StaticTargets:
    """Targets known in advance (offline runs, tests): name -> :class:`TargetDetails`."""

    def __init__(self, targets: dict[str, TargetDetails] | None = None) -> None:
        self.targets = dict(targets or {})

    def add(self, name: str, details: TargetDetails) -> None:
        """Make ``name`` available."""
        self.targets[name] = details

    def fetch(self, target: str, device: SimDevice) -> TargetDetails:
        """The stored details, or a verification failure for an unknown target."""
        try:
            return self.targets[target]
        except KeyError:
            raise TargetUnavailableError(
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

    def fetch(self, target: str, device: SimDevice) -> TargetDetails:
        """The verified details of ``target`` (raises :class:`TargetUnavailableError`)."""
        cached = self._cache.get(target)
        if cached is not None:
            return cached
        import msgspec
        from tuf.api import exceptions

        from agent.adapters.tuf_client import UpdateClient, classify, target_info
        from firmware_bundles.errors import BundleError
        from firmware_bundles.verify import verify_bundle

        metadata_dir = self.workdir / "metadata"
        bootstrap = None if (metadata_dir / "root.json").exists() else self.root
        phase = "refresh"
        try:
            client = UpdateClient(
                metadata_dir,
                self.metadata_url,
                self.targets_url,
                self.workdir / "targets",
                bootstrap_root=bootstrap,
            )
            client.refresh()
            found = client.find(target)
            if found is None:
                raise TargetUnavailableError(
                    FailureClass.VERIFICATION,
                    f"target {target} is not in the signed targets metadata",
                )
            info = target_info(found)
            phase = "download"
            path = client.download(found)
            manifest = verify_bundle(path)
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            problem = classify(exc, during=phase)
            failure = FailureClass.SECURITY if problem.security else FailureClass.DOWNLOAD
            raise TargetUnavailableError(failure, problem.detail, problem.attack) from None
        except ValueError as exc:
            raise TargetUnavailableError(
                FailureClass.SECURITY, str(exc), "invalid_metadata"
            ) from None
        except BundleError as exc:
            raise TargetUnavailableError(FailureClass.INSTALL, f"bundle refused: {exc}") from None
        except OSError as exc:
            raise TargetUnavailableError(
                FailureClass.DOWNLOAD, f"cannot reach the update repository: {exc}"
            ) from None
        simulation = msgspec.to_builtins(manifest.simulation) if manifest.simulation else {}
        details = TargetDetails(info, dict(simulation))
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


class SimUpdater:
    """One simulated device's updater: register with :meth:`attach` (every boot), then
    the device calls :meth:`step` as time passes and :meth:`on_boot` after each start."""

    def __init__(
        self,
        source: TargetSource,
        *,
        hardware_revision: str,
        model: str | None = None,
        timing: UpdateTiming | None = None,
        max_attempts: int = 3,
        on_commit: Callable[[SimDevice, TargetDetails], None] | None = None,
    ) -> None:
        self.source = source
        self.hardware_revision = hardware_revision
        self.model = model
        self.timing = timing or UpdateTiming()
        self.max_attempts = max_attempts
        self.on_commit = on_commit
        # the device's disk
        self.record = UpdateRecord()
        self.quarantine: list[str] = []
        self.highest_release_counter = 0
        self.command_id: str | None = None
        self.details: TargetDetails | None = None
        self.fault_rate_multiplier = 1.0
        self.history: list[UpdateRecord] = []
        # per boot
        self.due: float | None = None

    # --- wiring ------------------------------------------------------------------------

    def attach(self, device: SimDevice) -> None:
        """Install this updater on ``device`` (its ``install`` runner and boot hook)."""
        device.runners["install"] = self.run
        device.extensions.append(self)
        self.on_boot(device, device.t)

    def decide(self, cmd: Install) -> Decision:
        """Intake handler: accept an ``Install`` only when idle and not quarantined."""
        refusal = install_refusal(
            enabled=True,
            busy=False,
            state=self.record.state,
            version=cmd.version,
            quarantined=set(self.quarantine),
        )
        if refusal is not None:
            return reject(*refusal)
        return accept(
            "install", target=cmd.target, version=cmd.version, execution_id=cmd.execution_id
        )

    def next_due(self) -> float | None:
        """When the current phase ends (None: nothing running)."""
        return self.due

    # --- runner and stepping -------------------------------------------------------------

    def run(self, device: SimDevice, cmd: RunCommand, t: float) -> None:
        """Runner for an accepted ``install``: start the flow (``downloading``)."""
        params = cmd.params
        self.command_id = cmd.command_id
        self.details = None
        self._move(
            device,
            E.START,
            execution_id=params.get("execution_id"),
            target=params.get("target"),
            version=params.get("version"),
            from_version=device.slots.status().running_version,
        )
        self.due = t + self.timing.download_s

    def on_boot(self, device: SimDevice, t: float) -> None:
        """After a start: register the handler and resume or conclude a persisted update."""
        core = device.core
        if core is None:
            return
        core.intake.register(Install, self.decide)
        self.due = None
        record = self.record
        if record.state not in ACTIVE_STATES:
            if record.state in TERMINAL_STATES and not record.reported:
                self._finalize(device)
            return
        before = record
        record, action = on_restart(
            record,
            t,
            running_version=device.slots.status().running_version,
            max_attempts=self.max_attempts,
        )
        self.record = record
        if record.state is not before.state:
            self._announce(device, before.state)
        if record.state in TERMINAL_STATES:
            if action is RestartAction.ROLLBACK or device.slots.status().in_trial:
                device.slots.rollback()
            self._finalize(device)
            return
        durations = {
            RestartAction.RESUME_DOWNLOAD: self.timing.download_s,
            RestartAction.REVERIFY: self.timing.install_s,
            RestartAction.REINSTALL: self.timing.install_s,
            RestartAction.SWITCH: self.timing.reboot_s,
            RestartAction.CONTINUE_TRIAL: self.timing.trial_s,
        }
        self.due = t + durations.get(action, self.timing.download_s)

    def step(self, device: SimDevice, t: float) -> None:
        """Finish every phase due by ``t`` (the device is running)."""
        while self.due is not None and t >= self.due - 1e-9 and device.core is not None:
            state = self.record.state
            self.due = None
            if state is U.DOWNLOADING:
                self._downloaded(device, t)
            elif state in (U.VERIFIED, U.INSTALLING):
                self._installed(device, t)
            elif state in (U.INSTALLED, U.REBOOTING):
                self._reboot(device)
                return  # the device restarts; on_boot continues
            elif state is U.TRIAL:
                self._trial(device, t)

    # --- phases ----------------------------------------------------------------------

    def _downloaded(self, device: SimDevice, t: float) -> None:
        record = self.record
        try:
            details = self.source.fetch(str(record.target), device)
        except TargetUnavailableError as exc:
            self._fail(device, exc.failure_class, exc.reason, exc.attack)
            return
        if details.info.version != record.version:
            self._fail(
                device,
                FailureClass.VERIFICATION,
                f"signed metadata says {record.target} is version {details.info.version}, "
                f"the command asked for {record.version}",
            )
            return
        refused = check_target(
            details.info,
            hardware_revision=self.hardware_revision,
            model=self.model,
            highest_release_counter=self.highest_release_counter,
            agent_version=SIM_AGENT_VERSION,
            quarantined=set(self.quarantine),
        )
        if refused is not None:
            kind, text = refused
            if kind in SECURITY_CHECKS:
                self._fail(device, FailureClass.SECURITY, text, kind.value)
            else:
                self._fail(device, FailureClass.VERIFICATION, f"{kind.value}: {text}")
            return
        self.details = details
        self._move(device, E.DOWNLOADED, release_counter=details.info.release_counter)
        self._move(device, E.INSTALL)
        self.due = t + self.timing.install_s

    def _installed(self, device: SimDevice, t: float) -> None:
        if self.record.state is U.VERIFIED:
            self._move(device, E.INSTALL)
        device.slots.install(None, str(self.record.version))
        self._move(device, E.INSTALLED)
        self.due = t + self.timing.reboot_s

    def _reboot(self, device: SimDevice) -> None:
        if self.record.state is U.INSTALLED:
            self._move(device, E.REBOOT)
        if not device.slots.status().in_trial:
            device.slots.switch_for_trial()
        device.reboot(RebootReason.FIRMWARE_UPDATE)

    def _trial(self, device: SimDevice, t: float) -> None:
        simulation = self.details.simulation if self.details else {}
        if simulation.get("boot") == "crash":
            # the new slot dies on every boot: the restart table bounds the attempts
            while self.record.state is U.TRIAL:
                before = self.record
                self.record, _ = on_restart(
                    before, t, running_version=str(before.version), max_attempts=self.max_attempts
                )
                if self.record.state is not before.state:
                    self._announce(device, before.state)
            self._rolled_back(device)
            return
        if simulation.get("health") == "fail":
            self._move(
                device,
                E.ROLLBACK,
                failure_class=FailureClass.HEALTH,
                reason="health check failed (bundle's simulated outcome)",
            )
            self._rolled_back(device)
            return
        if self.hardware_revision in (simulation.get("fail_on_hardware") or []):
            self._move(
                device,
                E.ROLLBACK,
                failure_class=FailureClass.HEALTH,
                reason=f"health check failed on {self.hardware_revision} (simulated outcome)",
            )
            self._rolled_back(device)
            return
        self._move(device, E.HEALTHY)
        device.slots.commit()
        self.highest_release_counter = max(
            self.highest_release_counter, self.record.release_counter or 0
        )
        self.fault_rate_multiplier = float(simulation.get("fault_rate_multiplier", 1.0))
        if self.on_commit is not None and self.details is not None:
            self.on_commit(device, self.details)
        self._finalize(device)

    def _rolled_back(self, device: SimDevice) -> None:
        if device.slots.status().in_trial:
            device.slots.rollback()
        self._finalize(device)
        device.reboot(RebootReason.UPDATE_ROLLBACK)

    def _fail(
        self, device: SimDevice, failure: FailureClass, reason: str, attack: str | None = None
    ) -> None:
        self._move(device, E.FAIL, failure_class=failure, reason=reason[:1024], attack=attack)
        self._finalize(device)

    # --- reporting -------------------------------------------------------------------

    def _move(self, device: SimDevice, event: UpdateEvent, **changes: Any) -> None:
        before = self.record.state
        self.record = apply(self.record, event, device.device_time(), **changes)
        self._announce(device, before)

    def _announce(self, device: SimDevice, from_state: UpdateState | None) -> None:
        record = self.record
        self.history.append(record)
        core = device.core
        assert core is not None
        device._apply(
            core.update_state(
                device.device_time(),
                execution_id=record.execution_id,
                version=record.version or "",
                from_state=from_state,
                state=record.state,
                failure_class=record.failure_class,
                reason=record.reason,
                attack=record.attack,
            )
        )

    def _finalize(self, device: SimDevice) -> None:
        """Quarantine a version that failed here and ack the install command once."""
        from dataclasses import replace

        record = self.record
        self.due = None
        if (
            record.state is U.ROLLED_BACK
            and record.version
            and record.version not in self.quarantine
        ):
            self.quarantine.append(record.version)
        core = device.core
        if self.command_id and core is not None:
            ok = record.state is U.COMMITTED
            device._apply(
                core.command_result(
                    self.command_id,
                    device.device_time(),
                    ok=ok,
                    detail=f"committed {record.version}"
                    if ok
                    else f"{record.state.value}: {record.reason}",
                    result={
                        "execution_id": record.execution_id,
                        "state": record.state.value,
                        "version": record.version,
                    },
                )
            )
            self.command_id = None
        self.record = replace(record, reported=True)


__all__ = [
    "SIM_AGENT_VERSION",
    "SimUpdater",
    "StaticTargets",
    "TargetDetails",
    "TargetSource",
    "TargetUnavailableError",
    "TufTargets",
    "UpdateTiming",
    "details_from_manifest",
]
