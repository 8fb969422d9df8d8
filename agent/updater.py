"""The agent's OTA updater: drives the update flow of :mod:`agent.core.update_flow` on a
real (or simulated) device.

Every decision is the pure core's (transition table, restart table, target checks); this
module carries them out: python-tuf refresh and verified, resumable download, bundle
extraction into the inactive slot, the atomic switch, the "reboot", the trial health check,
and commit or rollback. The :class:`~agent.core.update_flow.UpdateRecord` is written to
``state_dir/update.json`` atomically *before* each action, together with the quarantine
list and the highest committed release counter, so whenever the process dies the next
start knows from the file alone what to do (:func:`~agent.core.update_flow.on_restart`).
Every transition is reported as an ``UpdateStateChanged`` event through the agent's
outbox (the :class:`UpdateHost` hands it over and waits until it is queued on disk).

The work runs in one worker thread per update (a Pi-class device has nothing better to do
with it); the simulator can drive the same core without threads. python-tuf is imported
only when an update runs, to keep the idle agent small.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

from agent.adapters.slots import DirectorySlots, SimulatedSlots, SlotError, Slots
from agent.config import TlsConfig, UpdatesConfig
from agent.core.commands import Decision, accept, reject
from agent.core.outputs import RunCommand
from agent.core.update_flow import (
    ACTIVE_STATES,
    SECURITY_CHECKS,
    TERMINAL_STATES,
    RestartAction,
    UpdateEvent,
    UpdateRecord,
    apply,
    check_target,
    install_refusal,
    on_restart,
)
from agent.state import atomic_write
from protocol import CheckUpdate, FailureClass, Install, RejectReason, UpdateState

log = logging.getLogger("agent.updater")

U = UpdateState
E = UpdateEvent

UPDATE_FILE = "update.json"
EXIT_RESTART = 75
"""Exit status of ``fleet-agent run`` meaning "restart me to boot the new slot"
(``Restart=always`` in the systemd unit does it; tests play systemd)."""
EXIT_SIMULATED_CRASH = 70
"""Exit status of a simulated crash on boot (bundle ``simulation.boot = "crash"``)."""
PAUSE_ENV = "FLEET_AGENT_TEST_PAUSE_IN_STATE"
"""Test hook: block the updater after persisting this state (so a test can SIGKILL it)."""
MAX_QUARANTINE = 100


class UpdateHost(Protocol):
    """What the updater needs from the daemon that runs it."""

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue an ``UpdateStateChanged`` event durably (returns once it is on disk)."""
        ...

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Acknowledge the outcome of an ``install`` / ``check_update`` command."""
        ...

    def server_reachable(self) -> bool:
        """True when the agent is connected to the broker and announced its presence."""
        ...

    def request_restart(self, reboot: bool) -> None:
        """Restart the agent (exit with :data:`EXIT_RESTART`) or reboot the device."""
        ...

    def crash(self) -> None:
        """Die abruptly (a simulated crash on boot)."""
        ...


class Interrupted(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """The update work must stop here (the agent is shutting down); the persisted record
    tells the next start how to go on."""


class _Finished(Interrupted):
    """Unwinds the worker once the update reached a terminal state."""


def make_slots(settings: UpdatesConfig) -> Slots:
    """The slot back-end named by ``updates.slots``."""
    if settings.slots == "simulated":
        return SimulatedSlots(settings.initial_version)
    assert settings.slots_dir is not None
    return DirectorySlots(settings.slots_dir, initial_version=settings.initial_version)


def slot_dir(slots: Slots) -> Path | None:
    """Directory of the running slot (None for simulated slots)."""
    if isinstance(slots, DirectorySlots):
        return (slots.root / "current").resolve()
    return None


def resolve_command(command: list[str], running_dir: Path, mount: str | None) -> list[str]:
    """The health-check command with paths under ``payload_mount`` pointing into the
    running slot (so ``/opt/demo/bin/app`` runs the *new* slot's ``bin/app``)."""
    resolved = list(command)
    if mount and resolved and resolved[0].startswith(mount + "/"):
        resolved[0] = str(running_dir / resolved[0][len(mount) + 1 :])
    return resolved


class Updater:
    """One device's update flow, persisted in ``state_dir/update.json``."""

    def __init__(
        self,
        settings: UpdatesConfig,
        state_dir: Path,
        host: UpdateHost,
        *,
        agent_version: str,
        slots: Slots | None = None,
        clock: Callable[[], float] = time.time,
        tuf_time: Callable[[], datetime | None] = lambda: None,
        tls: TlsConfig | None = None,
    ) -> None:
        self.settings = settings
        self.tls = tls or TlsConfig()
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / UPDATE_FILE
        self.host = host
        self.agent_version = agent_version
        self.slots = slots or make_slots(settings)
        self.clock = clock
        self.tuf_time = tuf_time
        self.download_dir = Path(settings.download_dir or self.state_dir / "downloads")
        self.metadata_dir = self.state_dir / "tuf"
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self.record = UpdateRecord()
        self.announced: str | None = None
        self.work: dict[str, Any] = {}
        self.quarantine: list[str] = []
        self.highest_release_counter = 0
        self._load()

    # --- persistence -----------------------------------------------------------------

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_bytes())
            self.record = UpdateRecord.from_dict(data["record"])
            self.announced = data.get("announced")
            self.work = dict(data.get("work") or {})
            self.quarantine = [str(v) for v in data.get("quarantine") or []]
            self.highest_release_counter = int(data.get("highest_release_counter") or 0)
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.error("update record %s is corrupt (%s); moved to %s", self.path, exc, aside)
            os.replace(self.path, aside)

    def _save(self) -> None:
        doc = {
            "record": self.record.to_dict(),
            "announced": self.announced,
            "work": self.work,
            "quarantine": self.quarantine[-MAX_QUARANTINE:],
            "highest_release_counter": self.highest_release_counter,
        }
        atomic_write(self.path, json.dumps(doc, sort_keys=True).encode())

    # --- what the daemon asks ----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while update work runs or the record is in an active state."""
        worker = self._worker
        return (worker is not None and worker.is_alive()) or self.record.state in ACTIVE_STATES

    def running_version(self) -> str | None:
        """Version of the slot the device runs now."""
        return self.slots.status().running_version

    def summary(self) -> dict[str, Any]:
        """Update state for ``fleet-agent status``."""
        status = self.slots.status()
        return {
            "state": self.record.state.value,
            "execution_id": self.record.execution_id,
            "version": self.record.version,
            "reason": self.record.reason,
            "running_slot": status.running,
            "running_version": status.running_version,
            "committed_version": status.committed_version,
            "quarantine": list(self.quarantine),
            "highest_release_counter": self.highest_release_counter,
        }

    def decide_install(self, cmd: Install) -> Decision:
        """Intake handler: accept an ``Install`` only when idle and not quarantined."""
        refusal = install_refusal(
            enabled=True,
            busy=self.busy,
            state=self.record.state,
            version=cmd.version,
            quarantined=set(self.quarantine),
        )
        if refusal is not None:
            return reject(*refusal)
        return accept(
            "install", target=cmd.target, version=cmd.version, execution_id=cmd.execution_id
        )

    def decide_check(self, cmd: CheckUpdate) -> Decision:
        """Intake handler: a metadata refresh, unless an update is running."""
        if self.busy:
            return reject(RejectReason.BUSY, f"an update is in progress ({self.record.state})")
        return accept("check_update")

    def start_install(self, cmd: RunCommand) -> None:
        """Runner for an accepted ``install``: the update runs in a worker thread."""
        self._spawn(self._install_worker, cmd.command_id, dict(cmd.params))

    def start_check(self, cmd: RunCommand) -> None:
        """Runner for an accepted ``check_update``."""
        self._spawn(self._check_worker, cmd.command_id)

    def resume(self) -> None:
        """At agent start: continue (or conclude) an update the last run left behind."""
        record = self.record
        if record.state in ACTIVE_STATES or (
            record.state in TERMINAL_STATES and not record.reported
        ):
            self._spawn(self._resume_worker)

    def close(self) -> None:
        """Stop waiting (health checks, backoff) so the process can exit."""
        self._stop.set()

    def wait_idle(self, timeout: float) -> bool:
        """Join the worker (tests and clean shutdown)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            return not worker.is_alive()
        return True

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._worker is not None and self._worker.is_alive():
                raise RuntimeError("update work is already running")
            self._worker = threading.Thread(target=target, args=args, name="updater", daemon=True)
            self._worker.start()

    # --- transitions -----------------------------------------------------------------

    def _announce(self, from_state: str | None) -> None:
        record = self.record
        fields: dict[str, Any] = {
            "execution_id": record.execution_id,
            "version": record.version or "",
            "from_state": UpdateState(from_state) if from_state else None,
            "state": record.state,
            "failure_class": record.failure_class,
            "reason": record.reason,
            "attack": record.attack,
        }
        self.host.emit(fields)
        self.announced = record.state.value
        self._save()
        log.info(
            "update %s %s: %s -> %s%s",
            record.execution_id,
            record.version,
            from_state,
            record.state.value,
            f" ({record.failure_class}: {record.reason})" if record.failure_class else "",
        )

    def _move(self, event: UpdateEvent, **changes: Any) -> None:
        old = self.record.state
        self.record = apply(self.record, event, self.clock(), **changes)
        self._save()  # persisted before anything else happens in the new state
        self._announce(old.value)

    def _checkpoint(self, state: UpdateState) -> None:
        """Test hook (``FLEET_AGENT_TEST_PAUSE_IN_STATE``): block here, in ``state``."""
        if os.environ.get(PAUSE_ENV) != state.value:
            return
        marker = self.state_dir / f"test-paused-{state.value}"
        atomic_write(marker, str(os.getpid()).encode())
        log.warning("test hook: pausing in state %s (pid %d)", state.value, os.getpid())
        self._stop.wait()
        raise Interrupted(f"stopped while paused in {state.value}")

    def _fail(
        self,
        failure: FailureClass,
        reason: str,
        attack: str | None = None,
        *,
        quarantine: bool = False,
    ) -> NoReturn:
        if quarantine:
            self.work["quarantine"] = True
        self._move(E.FAIL, failure_class=failure, reason=reason[:1024], attack=attack)
        self._finalize()
        raise _Finished

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise _Finished

    # --- workers ---------------------------------------------------------------------

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Interrupted:
            pass
        except Exception as exc:  # never crash the agent; end the update as failed
            log.exception("update failed unexpectedly")
            if self.record.state in ACTIVE_STATES:
                try:
                    self._on_unexpected(exc)
                except Interrupted:
                    pass
                except Exception:
                    log.exception("cannot record the failed update")

    def _on_unexpected(self, exc: Exception) -> None:
        state = self.record.state
        detail = f"unexpected error while {state.value}: {type(exc).__name__}: {exc}"
        if state in (U.REBOOTING, U.TRIAL):
            self._move(E.ROLLBACK, failure_class=FailureClass.BOOT, reason=detail[:1024])
            self._finalize()
            return
        self._fail(FailureClass.INSTALL, detail)

    def _install_worker(self, command_id: str, params: dict[str, Any]) -> None:
        def body() -> None:
            self.work = {"command_id": command_id, "target": str(params["target"])}
            self._move(
                E.START,
                execution_id=str(params["execution_id"]),
                target=str(params["target"]),
                version=str(params["version"]),
                from_version=self.running_version(),
            )
            self._drive(resumed=False)

        self._guard(body)

    def _resume_worker(self) -> None:
        def body() -> None:
            if self.announced != self.record.state.value:
                # persisted, but the kill came before the event reached the outbox
                self._announce(self.announced)
            before = self.record
            record, action = on_restart(
                before,
                self.clock(),
                running_version=self.running_version(),
                max_attempts=self.settings.max_attempts,
            )
            self.record = record
            self._save()
            if record.state is not before.state:
                self._announce(before.state.value)
            log.info("update record found in state %s: %s", before.state.value, action.value)
            if action is RestartAction.NONE and record.state not in TERMINAL_STATES:
                return
            self._drive(resumed=True)

        self._guard(body)

    # --- the flow --------------------------------------------------------------------

    def _drive(self, *, resumed: bool) -> None:
        """Carry the update forward from the persisted state until it ends or restarts."""
        while True:
            state = self.record.state
            if state in TERMINAL_STATES:
                if not resumed:
                    self._checkpoint(state)
                self._finalize()
                return
            self._checkpoint(state)
            if state is U.DOWNLOADING:
                self._download()
            elif state is U.VERIFIED:
                if resumed:
                    self._reverify()
                self._move(E.INSTALL)
                resumed = False
            elif state is U.INSTALLING:
                if resumed:
                    self._reverify()
                self._install()
                resumed = False
            elif state is U.INSTALLED:
                self._move(E.REBOOT)
            elif state is U.REBOOTING:
                if not self._switch():
                    return  # the process restarts (or the device reboots) now
            elif state is U.TRIAL:
                self._trial()
            resumed = False

    def _client(self) -> Any:
        from agent.adapters.tuf_client import ResumableFetcher, UpdateClient

        settings = self.settings
        bootstrap = None
        if not (self.metadata_dir / "root.json").exists():
            assert settings.root_path is not None
            bootstrap = settings.root_path.read_bytes()
        targets_dir = self.download_dir / "targets"
        tls = self.tls  # the fleet CA and device certificate also serve HTTPS mirrors
        fetcher = ResumableFetcher(
            self.download_dir / "partial",
            settings.targets_url,
            ca_certs=str(tls.ca) if tls.ca else None,
            cert_file=str(tls.cert) if tls.cert else None,
            key_file=str(tls.key) if tls.key else None,
        )
        return UpdateClient(
            self.metadata_dir,
            settings.metadata_url,
            settings.targets_url,
            targets_dir,
            bootstrap_root=bootstrap,
            fetcher=fetcher,
            reference_time=self.tuf_time(),
        )

    def _download(self) -> None:
        from tuf.api import exceptions

        from agent.adapters.tuf_client import classify, target_info

        record = self.record
        assert record.target is not None
        assert record.version is not None
        failures = 0
        while True:
            phase = "refresh"
            try:
                client = self._client()
                client.refresh()
                target = client.find(record.target)
                if target is None:
                    self._fail(
                        FailureClass.VERIFICATION,
                        f"target {record.target} is not in the signed targets metadata",
                    )
                try:
                    info = target_info(target)
                except ValueError as exc:
                    self._fail(FailureClass.SECURITY, str(exc), "invalid_metadata")
                if info.version != record.version:
                    self._fail(
                        FailureClass.VERIFICATION,
                        f"signed metadata says {record.target} is version {info.version}, "
                        f"the command asked for {record.version}",
                    )
                refused = check_target(
                    info,
                    hardware_revision=self.settings.hardware_revision,
                    model=self.settings.model,
                    highest_release_counter=self.highest_release_counter,
                    agent_version=self.agent_version,
                    quarantined=set(self.quarantine),
                )
                if refused is not None:
                    kind, text = refused
                    if kind in SECURITY_CHECKS:
                        self._fail(FailureClass.SECURITY, text, kind.value)
                    self._fail(FailureClass.VERIFICATION, f"{kind.value}: {text}")
                phase = "download"
                path = client.download(target)
            except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
                problem = classify(exc, during=phase)
                if problem.security:
                    self._fail(FailureClass.SECURITY, problem.detail, problem.attack)
                failures += 1
                if failures > self.settings.download_retries:
                    self._fail(
                        FailureClass.DOWNLOAD, f"{phase} failed {failures} times: {problem.detail}"
                    )
                delay = min(self.settings.retry_backoff_s * 2 ** (failures - 1), 300.0)
                log.warning("%s failed (%s); retrying in %.1fs", phase, problem.detail, delay)
                self._wait(delay)
                continue
            except OSError as exc:
                self._fail(FailureClass.DOWNLOAD, f"cannot store the download: {exc}")
            self.work["bundle_path"] = str(path)
            self.work["target_file"] = target.to_dict()
            self._move(E.DOWNLOADED, release_counter=info.release_counter)
            return

    def _reverify(self) -> None:
        """After a restart: check the downloaded bundle again against the signed length
        and hashes kept from the verified metadata (python-tuf does the check)."""
        from tuf.api import exceptions
        from tuf.api.metadata import TargetFile

        raw = self.work.get("bundle_path")
        described = self.work.get("target_file")
        if not raw or not isinstance(described, dict):
            self._fail(FailureClass.INSTALL, "no downloaded bundle recorded; install again")
        target = TargetFile.from_dict(dict(described), str(self.record.target))
        try:
            with open(str(raw), "rb") as handle:
                target.verify_length_and_hashes(handle)
        except FileNotFoundError:
            self._fail(FailureClass.INSTALL, f"downloaded bundle {raw} is gone; install again")
        except exceptions.LengthOrHashMismatchError as exc:
            self._fail(
                FailureClass.SECURITY, f"downloaded bundle changed: {exc}", "tampered_target"
            )

    def _install(self) -> None:
        from firmware_bundles.errors import BundleError
        from firmware_bundles.verify import extract_bundle, verify_bundle

        record = self.record
        bundle = Path(str(self.work["bundle_path"]))
        staging = self.download_dir / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if isinstance(self.slots, DirectorySlots):
                manifest = extract_bundle(bundle, staging)
            else:
                manifest = verify_bundle(bundle)
        except BundleError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self._fail(FailureClass.INSTALL, f"bundle refused: {exc}", quarantine=True)
        if manifest.version != record.version:
            self._fail(
                FailureClass.VERIFICATION,
                f"bundle manifest is version {manifest.version}, expected {record.version}",
            )
        if self.settings.hardware_revision not in manifest.hardware_revisions:
            self._fail(
                FailureClass.SECURITY,
                f"bundle supports {', '.join(manifest.hardware_revisions)}; this device is "
                f"{self.settings.hardware_revision}",
                "wrong_hardware",
            )
        import msgspec

        self.work["health"] = (
            msgspec.to_builtins(manifest.health_check) if manifest.health_check else None
        )
        self.work["simulation"] = (
            msgspec.to_builtins(manifest.simulation) if manifest.simulation else None
        )
        self._save()
        try:
            self.slots.install(staging, manifest.version)
        except (SlotError, OSError) as exc:
            self._fail(FailureClass.INSTALL, f"cannot write the inactive slot: {exc}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._move(E.INSTALLED)

    def _switch(self) -> bool:
        """Make the new slot run next; False when the process must restart to boot it."""
        status = self.slots.status()
        if not status.in_trial:
            try:
                self.slots.switch_for_trial()
            except SlotError as exc:
                self._move(E.ROLLBACK, failure_class=FailureClass.INSTALL, reason=str(exc))
                self._finalize()
                raise _Finished from None
        mode = self.settings.restart
        if mode == "none":
            self._move(E.BOOTED)
            return True
        self.host.request_restart(reboot=mode == "reboot")
        return False

    def _simulation(self) -> dict[str, Any]:
        if not self.settings.simulate_outcomes:
            return {}
        return dict(self.work.get("simulation") or {})

    def _trial(self) -> None:
        simulation = self._simulation()
        if simulation.get("boot") == "crash":
            self._simulated_crash()
            return
        problem = self._health_problem(simulation)
        if problem is None:
            self._move(E.HEALTHY)
            return
        failure, reason = problem
        self._move(E.ROLLBACK, failure_class=failure, reason=reason[:1024])

    def _simulated_crash(self) -> None:
        """The new slot "crashes on boot": the agent dies in TRIAL before any health
        check; the restart table's bounded attempts then roll it back."""
        if self.settings.restart != "none":
            log.error("simulated crash on boot of %s", self.record.version)
            self.host.crash()
            raise _Finished
        while self.record.state is U.TRIAL:  # in-process: replay the restarts
            before = self.record
            self.record, _action = on_restart(
                before,
                self.clock(),
                running_version=self.running_version(),
                max_attempts=self.settings.max_attempts,
            )
            self._save()
            if self.record.state is not before.state:
                self._announce(before.state.value)

    def _health_problem(self, simulation: dict[str, Any]) -> tuple[FailureClass, str] | None:
        spec = dict(self.work.get("health") or {})
        timeout = float(spec.get("timeout_s") or 60)
        if self.settings.health_timeout_s is not None:
            timeout = min(timeout, self.settings.health_timeout_s)
        started = self.record.trial_started_at or self.clock()
        deadline = started + timeout
        if self.clock() > deadline:
            return FailureClass.TIMEOUT, f"health check deadline ({timeout:g}s) passed"
        if simulation.get("health") == "fail":
            return FailureClass.HEALTH, "health check failed (bundle's simulated outcome)"
        if self.settings.hardware_revision in (simulation.get("fail_on_hardware") or []):
            return FailureClass.HEALTH, (
                f"health check failed on {self.settings.hardware_revision} (simulated outcome)"
            )
        command = spec.get("command")
        running = slot_dir(self.slots)
        if command and running is not None:
            argv = resolve_command(list(command), running, self.settings.payload_mount)
            try:
                result = subprocess.run(
                    argv,
                    cwd=running,
                    capture_output=True,
                    text=True,
                    timeout=max(1.0, deadline - self.clock()),
                )
            except subprocess.TimeoutExpired:
                return FailureClass.HEALTH, f"health command {argv[0]} did not finish in time"
            except OSError as exc:
                return FailureClass.HEALTH, f"health command {argv[0]} cannot run: {exc}"
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip()[-300:]
                return FailureClass.HEALTH, (
                    f"health command {argv[0]} exited {result.returncode}: {tail}"
                )
        unit = spec.get("systemd_unit")
        if unit:
            if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
                log.warning("health check: no systemd here; unit %s not checked", unit)
            elif not self._poll(
                lambda: (
                    subprocess.run(
                        ["systemctl", "is-active", "--quiet", str(unit)], check=False
                    ).returncode
                    == 0
                ),
                deadline,
            ):
                return FailureClass.HEALTH, f"systemd unit {unit} not active before the deadline"
        reachable = self.host.server_reachable
        if spec.get("require_server", True) and not self._poll(reachable, deadline):
            return FailureClass.HEALTH, "the agent did not reach the server before the deadline"
        return None

    def _poll(self, predicate: Callable[[], bool], deadline: float) -> bool:
        while True:
            if predicate():
                return True
            if self.clock() >= deadline:
                return False
            self._wait(min(0.2, max(0.0, deadline - self.clock())))

    def _finalize(self) -> None:
        """Bring the slots in line with the terminal state, quarantine a failed version,
        clean up, and report the outcome once."""
        record = self.record
        status = self.slots.status()
        if record.state is U.COMMITTED:
            if status.in_trial and status.running_version == record.version:
                self.slots.commit()
            self.highest_release_counter = max(
                self.highest_release_counter, record.release_counter or 0
            )
        elif status.in_trial:
            self.slots.rollback()
        failed_here = record.state is U.ROLLED_BACK or self.work.get("quarantine")
        if failed_here and record.version and record.version not in self.quarantine:
            self.quarantine.append(record.version)
        for leftover in ("staging", "partial", "targets"):
            shutil.rmtree(self.download_dir / leftover, ignore_errors=True)
        ok = record.state is U.COMMITTED
        command_id = self.work.get("command_id")
        if command_id:
            # queued durably before the record says "reported": a kill in between only
            # repeats the ack at the next start (at least once, never lost)
            self.host.ack(
                str(command_id),
                ok,
                f"committed {record.version}" if ok else f"{record.state.value}: {record.reason}",
                {
                    "execution_id": record.execution_id,
                    "state": record.state.value,
                    "version": record.version,
                    "failure_class": record.failure_class.value if record.failure_class else None,
                    "attack": record.attack,
                },
            )
        self.record = replace(record, reported=True)
        self._save()

    # --- check_update ----------------------------------------------------------------

    def _check_worker(self, command_id: str) -> None:
        try:
            result = self.check()
            self.host.ack(command_id, True, f"{len(result['installable'])} installable", result)
        except Exception as exc:
            from agent.adapters.tuf_client import classify

            problem = classify(exc, during="refresh")
            result = {"attack": problem.attack} if problem.security else {}
            self.host.ack(command_id, False, problem.detail[:1024], result)

    def check(self) -> dict[str, Any]:
        """Refresh the signed metadata and list the targets this device would accept."""
        from tuf.api.metadata import Metadata, Targets

        from agent.adapters.tuf_client import target_info
        from agent.core.update_flow import version_tuple

        client = self._client()
        client.refresh()
        signed = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json")).signed
        installable = []
        for name, target in signed.targets.items():
            try:
                info = target_info(target)
            except ValueError:
                continue
            if check_target(
                info,
                hardware_revision=self.settings.hardware_revision,
                model=self.settings.model,
                highest_release_counter=self.highest_release_counter,
                agent_version=self.agent_version,
                quarantined=set(self.quarantine),
            ):
                continue
            installable.append(
                {"target": name, "version": info.version, "release_counter": info.release_counter}
            )
        installable.sort(key=lambda t: (t["release_counter"], version_tuple(t["version"])))
        return {
            "targets_version": signed.version,
            "running_version": self.running_version(),
            "installable": installable[-20:],
            "latest": installable[-1] if installable else None,
        }
