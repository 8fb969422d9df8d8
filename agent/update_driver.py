"""The update driver: one handler per state of the update flow, beside its tables.

:mod:`agent.core.update_flow` says which state follows which event (``TRANSITIONS``) and
what to do after a restart (``RESTART_TABLE``); :data:`HANDLERS` says what work each state
does. A handler does one step (download, re-verify, install into the inactive slot,
switch, trial boot and health check, commit or roll back) and moves the record with one
event; the record is persisted *before* the work of the new state starts, so a process
killed anywhere resumes from the file alone (:meth:`UpdateDriver.resume`).

The driver owns no thread and never sleeps: :meth:`UpdateDriver.step` runs every handler
due at ``now`` and returns when it wants to be called again (a retry backoff, a simulated
phase duration) or None when it waits for a command or a restart. The daemon runs it in a
worker thread (:mod:`agent.updater`); the simulator steps thousands of them on a simulated
clock. Everything that touches the world comes in through :mod:`agent.update_ports`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

from agent.adapters.slots import SlotError, Slots
from agent.core.commands import Decision, accept, reject
from agent.core.outputs import RunCommand
from agent.core.update_flow import (
    ACTIVE_STATES,
    SECURITY_CHECKS,
    TERMINAL_STATES,
    CheckFailure,
    RestartAction,
    TargetInfo,
    UpdateEvent,
    UpdateRecord,
    apply,
    check_target,
    install_refusal,
    on_restart,
    version_tuple,
)
from agent.update_ports import (
    BoardCheck,
    BundleReader,
    BundleRefusedError,
    FetchedTarget,
    FetchError,
    TargetFetcher,
    TrialCheck,
    UpdateHost,
    UpdatePolicy,
    UpdateStore,
)
from protocol import CheckUpdate, FailureClass, Install, RejectReason, UpdateState

log = logging.getLogger("agent.updater")

U = UpdateState
E = UpdateEvent

MAX_QUARANTINE = 100
MAX_BACKOFF_S = 300.0

Handler = Callable[["UpdateDriver", float], float | None]
"""Does the work of the driver's current state at ``now``; returns when to step again."""


class _Ended(Exception):  # noqa: N818 (control flow: the update reached a terminal state)
    """Unwinds a handler that ended the update; its terminal handler runs next."""


class UpdateDriver:
    """One device's update, driven through :data:`HANDLERS` (no threads, no sleeps)."""

    def __init__(
        self,
        *,
        policy: UpdatePolicy,
        store: UpdateStore,
        slots: Slots,
        fetcher: TargetFetcher,
        bundles: BundleReader,
        trial: TrialCheck,
        host: UpdateHost,
        clock: Callable[[], float],
        scratch_dir: Path | None = None,
        before_step: Callable[[UpdateState], None] | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.slots = slots
        self.fetcher = fetcher
        self.bundles = bundles
        self.trial = trial
        self.host = host
        self.clock = clock
        self.scratch_dir = scratch_dir
        """Where unpacked bundles are staged (None: the slots need no files)."""
        self.before_step = before_step
        """Called with the state before its handler runs (a test hook blocks there)."""
        self.record = UpdateRecord()
        self.announced: str | None = None
        self.work: dict[str, Any] = {}
        self.quarantine: list[str] = []
        self.highest_release_counter = 0
        self.due: float | None = None
        self.restart_requested = False
        """This run asked for the restart that settles the outcome (nothing more to do)."""
        self._resumed = False
        self._failures = 0
        self._load()

    # --- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        data = self.store.load()
        if data is None:
            return
        self.record = UpdateRecord.from_dict(data["record"])
        self.announced = data.get("announced")
        self.work = dict(data.get("work") or {})
        self.quarantine = [str(v) for v in data.get("quarantine") or []]
        self.highest_release_counter = int(data.get("highest_release_counter") or 0)

    def save(self) -> None:
        """Persist the record, quarantine and work document (before acting on them)."""
        self.store.save(
            {
                "record": self.record.to_dict(),
                "announced": self.announced,
                "work": dict(self.work),
                "quarantine": self.quarantine[-MAX_QUARANTINE:],
                "highest_release_counter": self.highest_release_counter,
            }
        )

    # --- what the agent asks -------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while the record is in an active state."""
        return self.record.state in ACTIVE_STATES

    @property
    def unsettled(self) -> bool:
        """True when a persisted update is active or its outcome was not reported yet
        (what :meth:`resume` has work for)."""
        record = self.record
        return record.state in ACTIVE_STATES or (
            record.state in TERMINAL_STATES and not record.reported
        )

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

    def decide_install(self, cmd: Install, *, busy: bool = False) -> Decision:
        """Intake handler: accept an ``Install`` only when idle and not quarantined."""
        refusal = install_refusal(
            enabled=True,
            busy=busy,
            state=self.record.state,
            version=cmd.version,
            quarantined=self._quarantined(),
        )
        if refusal is not None:
            return reject(*refusal)
        return accept(
            "install", target=cmd.target, version=cmd.version, execution_id=cmd.execution_id
        )

    def decide_check(self, cmd: CheckUpdate, *, busy: bool = False) -> Decision:
        """Intake handler: a metadata refresh, unless an update is running."""
        if busy or self.active:
            return reject(RejectReason.BUSY, f"an update is in progress ({self.record.state})")
        return accept("check_update")

    def start(self, cmd: RunCommand, now: float) -> float | None:
        """Begin an accepted ``install`` (enter ``downloading``); returns the next wake."""
        params = cmd.params
        self._resumed = False
        self._failures = 0
        self.work = {"command_id": cmd.command_id, "target": str(params["target"])}
        self._move(
            E.START,
            execution_id=str(params["execution_id"]),
            target=str(params["target"]),
            version=str(params["version"]),
            from_version=self.running_version(),
        )
        self.due = self._due_in(self.record.state, now)
        return self.due

    def resume(self, now: float) -> float | None:
        """At every start: settle a persisted update with the restart table and schedule
        what is left of it (None: nothing to do)."""
        self.due = None
        self._failures = 0
        if not self.unsettled:
            return None
        if self.announced != self.record.state.value:
            # persisted, but the process died before the event was handed over
            self._announce(self.announced)
        before = self.record.state
        action = self._restarted()
        log.info("update record found in state %s: %s", before.value, action.value)
        self._resumed = True
        self.due = self._due_in(self.record.state, now)
        return self.due

    def step(self, now: float) -> float | None:
        """Run every handler due at ``now``; returns when to step again (None: idle)."""
        while self.due is not None and now >= self.due - 1e-9:
            state = self.record.state
            if self.before_step is not None and not (self._resumed and state in TERMINAL_STATES):
                self.before_step(state)
            try:
                self.due = HANDLERS[state](self, now)
            except _Ended:
                self.due = now
            if state not in TERMINAL_STATES:
                self._resumed = False
        return self.due

    def settle_again(self, now: float) -> float | None:
        """Schedule a terminal state's wind-down once more (one that raised, e.g. a slot
        write hitting a transient error, leaves the outcome unsettled until the next
        start); None when there is nothing to settle or a restart is pending."""
        if self.active or not self.unsettled or self.restart_requested:
            return None
        self.due = now
        return now

    def fail_unexpected(self, exc: BaseException, now: float) -> None:
        """End an active update after an error no handler expected (never crash the
        agent for it): rolled back when the new slot was tried, failed otherwise."""
        state = self.record.state
        if state not in ACTIVE_STATES:
            return
        detail = f"unexpected error while {state.value}: {type(exc).__name__}: {exc}"
        if state in (U.REBOOTING, U.TRIAL):
            self._move(E.ROLLBACK, failure_class=FailureClass.BOOT, reason=detail[:1024])
        else:
            self._move(E.FAIL, failure_class=FailureClass.INSTALL, reason=detail[:1024])
        self.due = now
        self.step(now)

    def check(self) -> dict[str, Any]:
        """Refresh the signed metadata and list the targets this device would accept."""
        self.fetcher.refresh()
        listing = self.fetcher.listing()
        installable = []
        for target in listing.targets:
            if self._refusal(target.info) is None:
                installable.append(
                    {
                        "target": target.name,
                        "version": target.info.version,
                        "release_counter": target.info.release_counter,
                    }
                )
        installable.sort(key=lambda t: (t["release_counter"], version_tuple(t["version"])))
        return {
            "targets_version": listing.version,
            "running_version": self.running_version(),
            "installable": installable[-20:],
            "latest": installable[-1] if installable else None,
        }

    # --- transitions ---------------------------------------------------------------------

    def _request_restart(self, reboot: bool) -> None:
        """Ask the host for the restart (or reboot) that settles the update."""
        self.restart_requested = True
        self.host.request_restart(reboot=reboot)

    def _due_in(self, state: UpdateState, now: float) -> float:
        return now + self.policy.phase_delay_s.get(state.value, 0.0)

    def _announce(self, from_state: str | None) -> None:
        record = self.record
        self.host.emit(
            {
                "execution_id": record.execution_id,
                "version": record.version or "",
                "from_state": UpdateState(from_state) if from_state else None,
                "state": record.state,
                "failure_class": record.failure_class,
                "reason": record.reason,
                "attack": record.attack,
            }
        )
        self.announced = record.state.value
        self.save()
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
        self.save()  # persisted before anything else happens in the new state
        self._announce(old.value)

    def _next(self, event: UpdateEvent, now: float, **changes: Any) -> float:
        """Move with ``event`` and schedule the new state's work."""
        self._move(event, **changes)
        return self._due_in(self.record.state, now)

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
        raise _Ended

    def _refusal(self, info: TargetInfo) -> tuple[CheckFailure, str] | None:
        return check_target(
            info,
            hardware_revision=self.policy.hardware_revision,
            model=self.policy.model,
            highest_release_counter=self.highest_release_counter,
            agent_version=self.policy.agent_version,
            quarantined=self._quarantined(),
        )

    def _quarantined(self) -> set[str]:
        """The quarantined versions, with the one whose failure :meth:`finish` has yet to
        quarantine (an install can be decided while that update winds down)."""
        versions = set(self.quarantine)
        record = self.record
        winding_down = record.state in TERMINAL_STATES and not record.reported
        failed_here = record.state is U.ROLLED_BACK or self.work.get("quarantine")
        if winding_down and failed_here and record.version:
            versions.add(record.version)
        return versions

    # --- the work of each state ------------------------------------------------------------

    def download(self, now: float) -> float | None:
        """``downloading``: refresh the metadata, check the target, download it (python-tuf
        verifies length and hashes); transient failures back off and try again."""
        record = self.record
        assert record.target is not None
        try:
            self.fetcher.refresh()
            target = self.fetcher.target_info(record.target)
            if target is None:
                self._fail(
                    FailureClass.VERIFICATION,
                    f"target {record.target} is not in the signed targets metadata",
                )
            info = target.info
            if info.version != record.version:
                self._fail(
                    FailureClass.VERIFICATION,
                    f"signed metadata says {record.target} is version {info.version}, "
                    f"the command asked for {record.version}",
                )
            refused = self._refusal(info)
            if refused is not None:
                kind, text = refused
                if kind in SECURITY_CHECKS:
                    self._fail(FailureClass.SECURITY, text, kind.value)
                self._fail(FailureClass.VERIFICATION, f"{kind.value}: {text}")
            path = self.fetcher.download(target)
        except FetchError as exc:
            if not exc.transient:
                self._fail(exc.failure_class, exc.reason, exc.attack)
            self._failures += 1
            if self._failures > self.policy.download_retries:
                self._fail(
                    FailureClass.DOWNLOAD,
                    f"{exc.phase} failed {self._failures} times: {exc.reason}",
                )
            delay = min(self.policy.retry_backoff_s * 2 ** (self._failures - 1), MAX_BACKOFF_S)
            log.warning("%s failed (%s); retrying in %.1fs", exc.phase, exc.reason, delay)
            return now + delay
        except OSError as exc:
            self._fail(FailureClass.DOWNLOAD, f"cannot store the download: {exc}")
        self.work["bundle_path"] = str(path)
        self.work["target_file"] = dict(target.described)
        return self._next(E.DOWNLOADED, now, release_counter=info.release_counter)

    def reverify(self) -> None:
        """After a restart: check the downloaded bundle again against the signed length
        and hashes kept from the verified metadata."""
        raw = self.work.get("bundle_path")
        described = self.work.get("target_file")
        if not raw or not isinstance(described, dict):
            self._fail(FailureClass.INSTALL, "no downloaded bundle recorded; install again")
        record = self.record
        info = TargetInfo(str(record.version), (), record.release_counter or 0)
        target = FetchedTarget(str(record.target), info, dict(described))
        try:
            self.fetcher.verify(target, Path(str(raw)))
        except FileNotFoundError:
            self._fail(FailureClass.INSTALL, f"downloaded bundle {raw} is gone; install again")
        except FetchError as exc:
            self._fail(exc.failure_class, exc.reason, exc.attack)

    def verified(self, now: float) -> float | None:
        """``verified``: begin writing the inactive slot (re-verify after a restart)."""
        if self._resumed:
            self.reverify()
        return self._next(E.INSTALL, now)

    def install(self, now: float) -> float | None:
        """``installing``: check the bundle, unpack it and write the inactive slot."""
        if self._resumed:
            self.reverify()
        record = self.record
        bundle = Path(str(self.work["bundle_path"]))
        staging = self.scratch_dir / "staging" if self.scratch_dir is not None else None
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            contents = self.bundles.read(bundle, staging)
        except BundleRefusedError as exc:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            self._fail(FailureClass.INSTALL, f"bundle refused: {exc}", quarantine=True)
        if contents.version != record.version:
            self._fail(
                FailureClass.VERIFICATION,
                f"bundle manifest is version {contents.version}, expected {record.version}",
            )
        revision = self.policy.hardware_revision
        if revision not in contents.hardware_revisions:
            self._fail(
                FailureClass.SECURITY,
                f"bundle supports {', '.join(contents.hardware_revisions)}; this device is "
                f"{revision}",
                "wrong_hardware",
            )
        if contents.raspberry_pi is not None:
            self._check_board(contents.raspberry_pi)
        self.work["health"] = contents.health
        self.work["simulation"] = contents.simulation
        self.save()
        try:
            self.slots.install(staging, contents.version)
        except (SlotError, OSError) as exc:
            self._fail(FailureClass.INSTALL, f"cannot write the inactive slot: {exc}")
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        return self._next(E.INSTALLED, now)

    def _check_board(self, needs: dict[str, Any]) -> None:
        """A whole-image bundle names the boards it runs on: ask the slots (before any
        write), and refuse it on slots that cannot tell (not a Raspberry Pi's)."""
        check = self.slots.board_refusal if isinstance(self.slots, BoardCheck) else None
        if check is None:
            refusal = "these slots cannot flash a Raspberry Pi image (use tryboot slots)"
        else:
            refusal = check(needs)
        if refusal is not None:
            self._fail(FailureClass.VERIFICATION, f"incompatible board: {refusal}")

    def installed(self, now: float) -> float | None:
        """``installed``: the slot is written; go for the switch."""
        return self._next(E.REBOOT, now)

    def switch(self, now: float) -> float | None:
        """``rebooting``: make the new slot run next, then boot it (in place, or by a
        restart after which :meth:`resume` goes on; None until then)."""
        if not self.slots.status().in_trial:
            try:
                self.slots.switch_for_trial()
            except SlotError as exc:
                self._move(E.ROLLBACK, failure_class=FailureClass.INSTALL, reason=str(exc))
                raise _Ended from None
        mode = self.policy.restart
        if mode == "none":
            return self._next(E.BOOTED, now)
        self._request_restart(reboot=mode == "reboot")
        return None

    def try_new_slot(self, now: float) -> float | None:
        """``trial``: the new slot runs; it crashes on boot, fails its health check
        (rolled back) or passes it (committed)."""
        if self.trial.boot_crashes(self.work):
            self._crash_on_boot()
            return now
        problem = self.trial.problem(self.record, self.work)
        if problem is None:
            return self._next(E.HEALTHY, now)
        failure, reason = problem
        return self._next(E.ROLLBACK, now, failure_class=failure, reason=reason[:1024])

    def _crash_on_boot(self) -> None:
        """The agent dies in ``trial`` before any health check; the restart table's
        bounded attempts then roll it back (played here when the host cannot die)."""
        if self.policy.restart != "none":
            log.error("simulated crash on boot of %s", self.record.version)
            self.host.crash()
        while self.record.state is U.TRIAL:
            self._restarted()

    def _restarted(self) -> RestartAction:
        """Apply the restart table to the record (persisted, announced when it moved)."""
        before = self.record
        self.record, action = on_restart(
            before,
            self.clock(),
            running_version=self.running_version(),
            max_attempts=self.policy.max_attempts,
        )
        self.save()
        if self.record.state is not before.state:
            self._announce(before.state.value)
        return action

    def _boot_committed_again(self) -> bool:
        """``committed``, but the device runs another version: the power went between
        the driver's commit and the slots' own, and a one-shot trial (the Pi's
        ``tryboot``) then boots the old slot again. The health check passed, so the new
        slot is booted once more (its trial re-armed, or a plain reboot when the slots
        had committed it already) and committed there; after ``max_attempts`` such boots
        that still come back on the old slot the update ends ``rolled_back``. True when a
        reboot was requested (the report waits for the next start)."""
        record = self.record
        status = self.slots.status()
        if self.policy.restart != "reboot" or status.running_version == record.version:
            return False
        tries = int(self.work.get("recommit_attempts") or 0) + 1
        if tries > self.policy.max_attempts:
            self._move(
                E.ROLLBACK,
                failure_class=FailureClass.BOOT,
                reason=f"committed {record.version} came back on {status.running_version} "
                f"{tries - 1} times; giving up",
            )
            return False
        self.work["recommit_attempts"] = tries
        self.save()
        log.warning(
            "committed %s but running %s: booting the committed version again (%d/%d)",
            record.version,
            status.running_version,
            tries,
            self.policy.max_attempts,
        )
        if status.committed_version != record.version:
            try:
                self.slots.switch_for_trial()
            except SlotError as exc:
                self._move(
                    E.ROLLBACK,
                    failure_class=FailureClass.BOOT,
                    reason=f"cannot boot committed {record.version} again: {exc}",
                )
                return False
        self._request_restart(reboot=True)
        return True

    def finish(self, now: float) -> float | None:
        """A terminal state: bring the slots in line, quarantine a failed version, clean
        up and report the outcome once (the ack is queued before ``reported`` is saved:
        a kill in between repeats it at the next start, never loses it)."""
        if self.record.reported:
            return None
        if self.record.state is U.COMMITTED and self._boot_committed_again():
            return None
        record = self.record
        status = self.slots.status()
        left_trial = False
        if record.state is U.COMMITTED:
            if status.in_trial and status.running_version == record.version:
                self.slots.commit()
            self.highest_release_counter = max(
                self.highest_release_counter, record.release_counter or 0
            )
        elif status.in_trial:
            self.slots.rollback()
            left_trial = True
        for version in self._quarantined() - set(self.quarantine):
            self.quarantine.append(version)
        if self.scratch_dir is not None:
            for leftover in ("staging", "partial", "targets"):
                shutil.rmtree(self.scratch_dir / leftover, ignore_errors=True)
        ok = record.state is U.COMMITTED
        command_id = self.work.get("command_id")
        if command_id:
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
        self.save()
        if left_trial:
            self.host.rolled_back()
        return None


HANDLERS: dict[UpdateState, Handler] = {
    U.DOWNLOADING: UpdateDriver.download,
    U.VERIFIED: UpdateDriver.verified,
    U.INSTALLING: UpdateDriver.install,
    U.INSTALLED: UpdateDriver.installed,
    U.REBOOTING: UpdateDriver.switch,
    U.TRIAL: UpdateDriver.try_new_slot,
    U.COMMITTED: UpdateDriver.finish,
    U.FAILED: UpdateDriver.finish,
    U.ROLLED_BACK: UpdateDriver.finish,
}
"""The work of each state (``idle`` has none: it waits for an ``install`` command)."""
