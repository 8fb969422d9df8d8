"""The daemon's updater: the update driver (:mod:`agent.update_driver`) in a worker thread,
over the device's real back-ends.

The back-ends are python-tuf (:class:`~agent.adapters.tuf_fetcher.TufFetcher`, imported
only when an update runs, to keep the idle agent small), the bundle reader, the slots named
by ``updates.slots``, the bundle's health check and ``state_dir/update.json`` (written
atomically before each action). Every transition is reported as an ``UpdateStateChanged``
event through the agent's outbox (the :class:`AgentUpdateHost` hands it over and waits until
it is queued on disk). One worker thread runs an update at a time (a Pi-class device has
nothing better to do with it; work accepted while the last one winds down waits for it in
a thread of its own); it only calls :meth:`UpdateDriver.step` and waits in between.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.adapters.bundles import BundleFiles
from agent.adapters.slots import DirectorySlots, SimulatedSlots, Slots
from agent.adapters.tryboot import TrybootLayout, TrybootSlots
from agent.adapters.tryboot_io import MountedAutoboot, Watchdog, command_remount, make_arm
from agent.config import TlsConfig, UpdatesConfig
from agent.core.commands import Decision
from agent.core.outputs import RunCommand
from agent.core.update_flow import UpdateRecord
from agent.health_check import BundleHealthCheck, resolve_command, slot_dir
from agent.state import atomic_write
from agent.update_driver import UpdateDriver
from agent.update_ports import (
    FetchedTarget,
    FetchError,
    FileUpdateStore,
    TargetFetcher,
    TargetListing,
    UpdateHost,
    UpdatePolicy,
)
from protocol import CheckUpdate, FailureClass, Install, UpdateState

if TYPE_CHECKING:
    from agent.adapters.tuf_fetcher import TufFetcher

log = logging.getLogger("agent.updater")

UPDATE_FILE = "update.json"
EXIT_RESTART = 75
"""Exit status of ``fleet-agent run`` meaning "restart me to boot the new slot"
(``Restart=always`` in the systemd unit does it; tests play systemd)."""
EXIT_SIMULATED_CRASH = 70
"""Exit status of a simulated crash on boot (bundle ``simulation.boot = "crash"``)."""
PENDING_FILE = "pending-command.json"
"""An accepted command waiting for the previous update's wind-down (answered at restart)."""
PAUSE_ENV = "FLEET_AGENT_TEST_PAUSE_IN_STATE"
"""Test hook: block the updater after persisting this state (so a test can SIGKILL it)."""

__all__ = [
    "EXIT_RESTART",
    "EXIT_SIMULATED_CRASH",
    "PAUSE_ENV",
    "UPDATE_FILE",
    "AgentUpdateHost",
    "Interrupted",
    "Updater",
    "make_slots",
    "resolve_command",
    "slot_dir",
]


class AgentUpdateHost(UpdateHost, Protocol):
    """What the updater needs from the daemon that runs it."""

    def server_reachable(self) -> bool:
        """True when the agent is connected to the broker and announced its presence."""
        ...


class Interrupted(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """The update work must stop here (the agent is shutting down); the persisted record
    tells the next start how to go on."""


def make_slots(settings: UpdatesConfig, state_dir: Path | None = None) -> Slots:
    """The slot back-end named by ``updates.slots`` (tryboot keeps its state file in
    ``state_dir``, on the data partition)."""
    if settings.slots == "simulated":
        return SimulatedSlots(settings.initial_version)
    if settings.slots == "tryboot":
        tb = settings.tryboot
        remount = command_remount(tb.autoboot.parent) if tb.remount else None
        layout = TrybootLayout(
            state_file=(state_dir or Path(".")) / "tryboot.json",
            autoboot=MountedAutoboot(tb.autoboot, remount),
            device_tree=tb.device_tree,
            boot_partitions=tb.boot_partitions,
            boot_devices=tb.boot_devices,
            root_devices=tb.root_devices,
        )
        watchdog = Watchdog(tb.watchdog) if tb.watchdog else None
        return TrybootSlots(
            layout,
            arm=make_arm(tb.arm),
            watchdog=watchdog,
            initial_version=settings.initial_version,
        )
    assert settings.slots_dir is not None
    return DirectorySlots(settings.slots_dir, initial_version=settings.initial_version)


class _LazyTuf:
    """The TUF fetcher, built (and python-tuf imported) on first use."""

    def __init__(self, build: Callable[[], TufFetcher]) -> None:
        self._build = build
        self._fetcher: TufFetcher | None = None

    def _get(self) -> TufFetcher:
        if self._fetcher is None:
            self._fetcher = self._build()
        return self._fetcher

    def refresh(self) -> None:
        """See :meth:`TufFetcher.refresh`."""
        self._get().refresh()

    def target_info(self, name: str) -> FetchedTarget | None:
        """See :meth:`TufFetcher.target_info`."""
        return self._get().target_info(name)

    def download(self, target: FetchedTarget) -> Path:
        """See :meth:`TufFetcher.download`."""
        return self._get().download(target)

    def verify(self, target: FetchedTarget, path: Path) -> None:
        """See :meth:`TufFetcher.verify`."""
        self._get().verify(target, path)

    def listing(self) -> TargetListing:
        """See :meth:`TufFetcher.listing`."""
        return self._get().listing()


class Updater:
    """One device's update flow, persisted in ``state_dir/update.json``, run by a worker
    thread that steps the :class:`~agent.update_driver.UpdateDriver`."""

    def __init__(
        self,
        settings: UpdatesConfig,
        state_dir: Path,
        host: AgentUpdateHost,
        *,
        agent_version: str,
        slots: Slots | None = None,
        clock: Callable[[], float] = time.time,
        tuf_time: Callable[[], datetime | None] = lambda: None,
        tls: TlsConfig | None = None,
        fetcher: TargetFetcher | None = None,
    ) -> None:
        """``slots`` and ``fetcher`` default to the back-ends ``settings`` name (python-tuf
        against ``metadata_url`` / ``targets_url``); tests may pass their own."""
        self.settings = settings
        self.tls = tls or TlsConfig()
        self.state_dir = Path(state_dir)
        self.host = host
        self.clock = clock
        self.tuf_time = tuf_time
        """The time python-tuf checks expiry against (None: the system clock)."""
        self.slots = slots or make_slots(settings, self.state_dir)
        self.download_dir = Path(settings.download_dir or self.state_dir / "downloads")
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._starting = False
        self._checking = False
        self._pending: str | None = None  # the command in PENDING_FILE, if any
        self._pending_lock = threading.Lock()
        self.driver = UpdateDriver(
            policy=UpdatePolicy(
                hardware_revision=settings.hardware_revision,
                agent_version=agent_version,
                model=settings.model,
                max_attempts=settings.max_attempts,
                download_retries=settings.download_retries,
                retry_backoff_s=settings.retry_backoff_s,
                restart=settings.restart,
            ),
            store=FileUpdateStore(self.state_dir / UPDATE_FILE),
            slots=self.slots,
            fetcher=fetcher or _LazyTuf(self._tuf),
            bundles=BundleFiles(extract=isinstance(self.slots, (DirectorySlots, TrybootSlots))),
            trial=BundleHealthCheck(
                settings,
                self.slots,
                clock=clock,
                wait=self._wait,
                server_reachable=host.server_reachable,
            ),
            host=host,
            clock=clock,
            scratch_dir=self.download_dir,
            before_step=self._checkpoint,
        )

    def _tuf(self) -> TufFetcher:
        from agent.adapters.tuf_fetcher import TufFetcher

        settings, tls = self.settings, self.tls

        def root() -> bytes:
            assert settings.root_path is not None
            return settings.root_path.read_bytes()

        return TufFetcher(
            self.state_dir / "tuf",
            settings.metadata_url,
            settings.targets_url,
            self.download_dir,
            root=root,
            reference_time=lambda: self.tuf_time(),
            ca_certs=str(tls.ca) if tls.ca else None,
            cert_file=str(tls.cert) if tls.cert else None,
            key_file=str(tls.key) if tls.key else None,
        )

    # --- the driver's state --------------------------------------------------------------

    @property
    def record(self) -> UpdateRecord:
        """The persisted update record."""
        return self.driver.record

    @property
    def quarantine(self) -> list[str]:
        """Versions that failed on this device (never installed again)."""
        return self.driver.quarantine

    @property
    def work(self) -> dict[str, Any]:
        """The current update's working data (command id, bundle path, health spec)."""
        return self.driver.work

    @property
    def busy(self) -> bool:
        """True while update work runs: the record is active, an install is starting, or a
        metadata check runs.

        An update whose outcome was reported but whose worker is still winding down
        (slots, clean-up, the command's final ack) is not busy: the server counts that
        execution as finished and may send the next install at once, which waits for the
        worker to return (:meth:`_spawn`) instead of being refused. An outcome that only
        the restart this run asked for can settle is busy until then."""
        driver = self.driver
        if driver.active or self._starting or self._checking:
            return True
        return driver.restart_requested and driver.unsettled

    def running_version(self) -> str | None:
        """Version of the slot the device runs now."""
        return self.driver.running_version()

    def summary(self) -> dict[str, Any]:
        """Update state for ``fleet-agent status``."""
        return self.driver.summary()

    def check(self) -> dict[str, Any]:
        """Refresh the signed metadata and list the targets this device would accept."""
        return self.driver.check()

    # --- what the daemon asks --------------------------------------------------------------

    def decide_install(self, cmd: Install) -> Decision:
        """Intake handler: accept an ``Install`` only when idle and not quarantined."""
        return self.driver.decide_install(cmd, busy=self.busy)

    def decide_check(self, cmd: CheckUpdate) -> Decision:
        """Intake handler: a metadata refresh, unless an update is running."""
        return self.driver.decide_check(cmd, busy=self.busy)

    def start_install(self, cmd: RunCommand) -> None:
        """Runner for an accepted ``install``: the update runs in a worker thread."""

        def start(now: float) -> float | None:
            try:
                return self.driver.start(cmd, now)
            finally:
                self._starting = False
                self._drop_pending(cmd.command_id)  # the record names it from here on

        self._starting = True
        try:
            self._spawn(self._drive, start, command_id=cmd.command_id, cancel=self._end_start)
        except BaseException:
            self._starting = False
            raise

    def start_check(self, cmd: RunCommand) -> None:
        """Runner for an accepted ``check_update``."""
        self._checking = True
        try:
            command_id, cancel = cmd.command_id, self._end_check
            self._spawn(self._check_worker, command_id, command_id=command_id, cancel=cancel)
        except BaseException:
            self._checking = False
            raise

    def resume(self) -> None:
        """At agent start: continue (or conclude) an update the last run left behind, then
        answer a command the last run accepted but never started (it was waiting for that
        update's wind-down): the server learns at once that it did not run."""
        pending = self._load_pending()
        if pending is not None and pending == self.driver.work.get("command_id"):
            self._drop_pending(pending)  # it did start: the record carries it
            pending = None
        if self.driver.unsettled or pending is not None:
            self._spawn(self._settle, pending)

    def _settle(self, pending: str | None) -> None:
        if self.driver.unsettled:
            self._drive(self.driver.resume)
        if pending is not None and not self._stop.is_set():
            self._not_started(pending, "the agent restarted before it could start")

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

    # --- the worker ----------------------------------------------------------------------

    def _spawn(
        self,
        target: Callable[..., None],
        *args: Any,
        command_id: str | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> None:
        """Run ``target`` in a new worker thread.

        Work accepted while the previous update winds down (its outcome reported; the
        slots, clean-up and final ack still to do) starts once that worker returns. The
        new thread waits for it, never the loop's thread: the wind-down hands its ack to
        the loop, so a loop waiting for the worker would wait for itself. Meanwhile the
        accepted command (``command_id``) is on disk, so a restart answers it. A
        wind-down that raised is tried once more first. If the agent stops, or the
        outcome is still unsettled (a restart is pending, or the wind-down failed again),
        the work does not start (``cancel``) and the command is answered as not started:
        an unsettled update is never overwritten."""
        with self._lock:
            previous = self._worker
            if previous is not None and previous.is_alive() and self.driver.active:
                raise RuntimeError("update work is already running")
            waiting = previous if previous is not None and previous.is_alive() else None
            if waiting is not None and command_id is not None:
                self._save_pending(command_id)

            def follow() -> None:
                if waiting is not None:
                    waiting.join()
                if command_id is not None and not self._stop.is_set():
                    self._drive(self.driver.settle_again)  # a wind-down that raised
                if command_id is not None and (self._stop.is_set() or self.driver.unsettled):
                    if cancel is not None:
                        cancel()
                    if self._stop.is_set():
                        self._save_pending(command_id)  # the next start answers it
                    else:
                        self._not_started(command_id, "the last update is not settled yet")
                    return
                target(*args)

            self._worker = threading.Thread(target=follow, name="updater", daemon=True)
            self._worker.start()

    def _end_start(self) -> None:
        self._starting = False

    def _end_check(self) -> None:
        self._checking = False

    def _not_started(self, command_id: str, why: str) -> None:
        """Answer an accepted command that never ran (``started`` false in the result: the
        server then fails its execution at once instead of waiting for its timeout)."""
        log.warning("command %s not started: %s", command_id, why)
        try:
            self.host.ack(command_id, False, why, {"started": False})
        except Interrupted:
            return  # stopping: the file stays, the next start answers it
        self._drop_pending(command_id)

    def _pending_path(self) -> Path:
        return self.state_dir / PENDING_FILE

    def _save_pending(self, command_id: str) -> None:
        with self._pending_lock:
            self._pending = command_id
            try:
                doc = json.dumps({"command_id": command_id}).encode()
                atomic_write(self._pending_path(), doc)
            except OSError as exc:  # best effort: without it a restart leaves it to the timeout
                log.error("cannot keep the accepted command %s on disk: %s", command_id, exc)

    def _load_pending(self) -> str | None:
        """The command left in the file by the last run (read once, at start)."""
        with self._pending_lock:
            self._pending = self._read_pending()
            return self._pending

    def _read_pending(self) -> str | None:
        path = self._pending_path()
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            self._remove_pending()
            return None
        command_id = doc.get("command_id") if isinstance(doc, dict) else None
        if not isinstance(command_id, str) or not command_id:
            log.warning("ignoring %s: no command id", path)
            self._remove_pending()
            return None
        return command_id

    def _drop_pending(self, command_id: str) -> None:
        """Forget ``command_id``'s entry (no file I/O unless it is the one kept)."""
        with self._pending_lock:
            if self._pending != command_id:
                return
            self._pending = None
            self._remove_pending()

    def _remove_pending(self) -> None:
        try:
            self._pending_path().unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot remove %s: %s", self._pending_path(), exc)

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(max(0.0, seconds)):
            raise Interrupted("the agent is stopping")

    def _drive(self, first: Callable[[float], float | None]) -> None:
        """Step the driver until it has nothing more to do (or the agent stops)."""
        driver = self.driver
        try:
            wake = first(self.clock())
            while wake is not None:
                delay = wake - self.clock()
                if delay > 0:
                    self._wait(delay)
                wake = driver.step(self.clock())
        except Interrupted:
            pass
        except Exception as exc:  # never crash the agent; end the update as failed
            log.exception("update failed unexpectedly")
            try:
                driver.fail_unexpected(exc, self.clock())
            except Interrupted:
                pass
            except Exception:
                log.exception("cannot record the failed update")

    def _checkpoint(self, state: UpdateState) -> None:
        """Test hook (``FLEET_AGENT_TEST_PAUSE_IN_STATE``): block here, in ``state``."""
        if os.environ.get(PAUSE_ENV) != state.value:
            return
        marker = self.state_dir / f"test-paused-{state.value}"
        atomic_write(marker, str(os.getpid()).encode())
        log.warning("test hook: pausing in state %s (pid %d)", state.value, os.getpid())
        self._stop.wait()
        raise Interrupted(f"stopped while paused in {state.value}")

    def _check_worker(self, command_id: str) -> None:
        self._drop_pending(command_id)
        try:
            self._check(command_id)
        finally:
            self._checking = False

    def _check(self, command_id: str) -> None:
        try:
            result = self.driver.check()
            self.host.ack(command_id, True, f"{len(result['installable'])} installable", result)
        except FetchError as exc:
            security = exc.failure_class is FailureClass.SECURITY
            self.host.ack(
                command_id, False, exc.reason[:1024], {"attack": exc.attack} if security else {}
            )
        except Exception as exc:
            self.host.ack(command_id, False, f"{type(exc).__name__}: {exc}"[:1024], {})
