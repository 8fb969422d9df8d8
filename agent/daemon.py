"""The agent daemon: wires the pure core to the clock, collectors, outbox and MQTT.

One thread does everything: it sleeps inside the MQTT transport's network loop until
the next sample, publish, reconnect or watchdog deadline. Commands that can take long
(diagnostics upload) run in a short-lived worker thread and report back through a queue.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from agent import __version__
from agent.collectors import Collector, SystemCollector
from agent.config import AgentConfig
from agent.core.agent_core import AgentCore
from agent.core.outputs import Output, PersistSeq, Publish, RunCommand
from agent.core.reboot import PreviousRun, classify_start, recent_starts
from agent.core.rules import build_rules
from agent.core.schedule import Backoff, Schedule
from agent.core.sequence import SeqAllocator
from agent.logs import RingHandler
from agent.safe_mode import install as install_safe_mode
from agent.sdnotify import Notifier
from agent.state import StateFile, atomic_write
from agent.store import Limits, Outbox, SqliteOutbox
from agent.transport import MqttSettings, MqttTransport, Transport, TransportEvents
from protocol import (
    SCHEMA_VERSION,
    CheckUpdate,
    Install,
    Kind,
    PresenceState,
    RebootReason,
    Sample,
    encode,
    topic,
)

if TYPE_CHECKING:
    from agent.renewal import CertificateRenewal
    from agent.updater import Updater

log = logging.getLogger("agent")

SHUTDOWN_DRAIN_S = 5.0
"""At SIGTERM, how long to keep delivering queued messages before disconnecting."""
STATUS_FILE = "status.json"
MAX_LOOP_WAIT_S = 1.0
RENEWAL_CHECK_S = 3600.0
"""How often a connected agent checks whether its certificate is due for renewal."""
MAX_CONSECUTIVE_FAILURES = 30


class Clock(Protocol):
    """Time source of the daemon (the simulator and tests may substitute their own)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (scheduling)."""
        ...

    def time(self) -> float:
        """Wall-clock Unix seconds (message timestamps)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (only used while no connection exists)."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """``time.sleep()``."""
        time.sleep(seconds)


def machine_boot_id() -> str | None:
    """The kernel's id of the current boot: tells a machine reboot from an agent restart,
    and unlike the boot time it does not move when NTP steps the clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


_SAMPLE_DECODER = msgspec.json.Decoder(Sample)


def sanitize(sample: Sample) -> Sample:
    """Drop any field the protocol would reject (so one odd reading never costs a batch)."""
    try:
        return _SAMPLE_DECODER.decode(msgspec.json.encode(sample))
    except msgspec.ValidationError:
        pass
    good: dict[str, Any] = {"ts": sample.ts}
    for name in Sample.__struct_fields__:
        value = getattr(sample, name)
        if name == "ts" or value is None:
            continue
        try:
            msgspec.convert({"ts": sample.ts, name: value}, Sample)
        except msgspec.ValidationError:
            log.warning("dropping out-of-range reading %s=%r", name, value)
            continue
        good[name] = value
    return Sample(**good)


class _UpdateHost:
    """The daemon as seen by the updater's worker thread (everything goes through queues
    the loop thread drains, so the core and the outbox stay single-threaded)."""

    def __init__(self, daemon: AgentDaemon) -> None:
        self.daemon = daemon

    def _deliver(self, make: Callable[[float], list[Output]]) -> None:
        from agent.updater import Interrupted

        done = threading.Event()
        self.daemon._update_events.put((make, done))
        while not done.wait(0.5):
            if self.daemon.stopping:
                raise Interrupted("agent stopping before the update report was queued")

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue the event for the loop and wait until it is in the on-disk outbox."""
        core = self.daemon.core
        self._deliver(lambda now: core.update_state(now, **fields))

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Acknowledge the command's outcome (also waits until it is in the outbox)."""
        core = self.daemon.core
        self._deliver(
            lambda now: core.command_result(command_id, now, ok=ok, detail=detail, result=result)
        )

    def server_reachable(self) -> bool:
        """Connected to the broker (``online`` presence is sent on every connect)."""
        return self.daemon.connected_since is not None

    def request_restart(self, reboot: bool) -> None:
        """Ask the loop to restart the agent (or the device) to boot the new slot."""
        self.daemon._restart_requests.put(reboot)

    def crash(self) -> None:
        """Die at once, like a crash (no clean stop recorded)."""
        from agent.updater import EXIT_SIMULATED_CRASH

        log.error("exiting abruptly: simulated crash on boot")
        logging.shutdown()
        os._exit(EXIT_SIMULATED_CRASH)

    def rolled_back(self) -> None:
        """Nothing to do: the agent keeps running while the slots point back at the
        known-good one."""


@dataclass
class _Link:
    """Delivery bookkeeping of the current connection."""

    cursor: int = -1
    inflight: dict[int, int | None] | None = None


class AgentDaemon:
    """A running agent: construct, then :meth:`run` until :meth:`request_stop`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        collector: Collector | None = None,
        transport: Transport | None = None,
        outbox: Outbox | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        ring: RingHandler | None = None,
        reconnect_max_s: float = 60.0,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self.ring = ring
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = StateFile(self.state_dir)
        data = self.state.load()
        self.outbox: Outbox = outbox or open_outbox(
            self.state_dir / "outbox.db",
            Limits(config.buffer_max_bytes, config.buffer_max_age_s),
        )
        self.collector: Collector = collector or SystemCollector(disk_path=config.disk_path)
        self.boot_id = str(uuid.uuid4())
        self.topics = {kind: topic(config.device_id, kind) for kind in Kind}
        self._stop = threading.Event()
        self._results: queue.Queue[tuple[str, bool, str, dict[str, Any]]] = queue.Queue()
        self._acked: list[int] = []
        self._todo: list[RunCommand] = []
        self._update_events: queue.Queue[
            tuple[Callable[[float], list[Output]], threading.Event]
        ] = queue.Queue()
        self._restart_requests: queue.Queue[bool] = queue.Queue()
        self.exit_code = 0
        """What ``fleet-agent run`` exits with (``EXIT_RESTART`` after an update switch)."""
        self.loop_errors_total = 0
        self.runners: dict[str, Callable[[RunCommand], None]] = {
            "reboot": self._reboot,
            "collect_diagnostics": self._start_diagnostics,
            "install_certificate": self._install_certificate,
        }
        self.renewal: CertificateRenewal | None = None
        if config.tls.bundle:
            # Imported only when used: cryptography costs ~8 MB of RSS on every device.
            from agent.renewal import CertificateRenewal

            self.renewal = CertificateRenewal(config.tls.bundle)
        self._renewal_check_at = 0.0
        self._link = _Link(inflight={})
        self.connected_since: float | None = None
        self.backoff = Backoff(initial=min(1.0, reconnect_max_s), maximum=reconnect_max_s)
        self._reconnect_at = 0.0
        self._outage_logged = False
        self.started_at = self.clock.time()
        self.updater: Updater | None = None
        software_version = config.software_version
        if config.updates.enabled:
            from agent.updater import Updater

            self.updater = Updater(
                config.updates,
                self.state_dir,
                _UpdateHost(self),
                agent_version=__version__,
                tls=config.tls,
            )
            software_version = self.updater.running_version() or software_version
            self.runners["install"] = self.updater.start_install
            self.runners["check_update"] = self.updater.start_check

        wall = self.clock.time()
        kernel_boot = machine_boot_id()
        previous = _previous_run(data)
        self.reboot_reason = classify_start(previous, kernel_boot)
        starts = recent_starts(list(data.get("starts", [])), wall)
        max_seq = self.outbox.max_seq()
        seq = SeqAllocator(
            int(data.get("seq_reserved", 0) or 0), floor=(max_seq + 1) if max_seq is not None else 0
        )
        self.core = AgentCore(
            config.device_id,
            self.boot_id,
            seq=seq,
            rules=build_rules(config.faults, starts),
            agent_version=__version__,
            software_version=software_version,
        )
        if self.updater is not None:
            self.core.intake.register(Install, self.updater.decide_install)
            self.core.intake.register(CheckUpdate, self.updater.decide_check)
        core_state = data.get("core")
        if isinstance(core_state, dict):
            self.core.restore(core_state)
        stashed = []
        for raw in self.outbox.stashed():
            try:
                stashed.append(_SAMPLE_DECODER.decode(raw))
            except msgspec.DecodeError:
                continue
        self.core.restore_pending(stashed)
        self.state.save(
            starts=starts,
            last_run={
                "boot_id": self.boot_id,
                "machine_boot_id": kernel_boot,
                "clean_stop": False,
                "intended": None,
                "started_at": wall,
            },
        )
        log.info(
            "agent %s starting as %s (boot %s, reason %s, %d messages queued, %d samples restored)",
            __version__,
            config.device_id,
            self.boot_id,
            self.reboot_reason.name,
            self.outbox.depth(),
            len(stashed),
        )
        slot = self.updater.slots.status().running if self.updater is not None else None
        self._apply(
            self.core.boot(
                wall, self.reboot_reason, previous.boot_id if previous else None, slot=slot
            )
        )

        events = TransportEvents(
            on_connected=self._on_connected,
            on_disconnected=self._on_disconnected,
            on_published=self._on_published,
            on_message=self._on_message,
        )
        if transport is None:
            transport = MqttTransport(_mqtt_settings(config), events)
        else:
            transport.events = events
        self.transport = transport
        self.schedule = Schedule(
            config.sample_interval_s, config.publish_interval_s, self.clock.monotonic()
        )
        self._watchdog_at = 0.0
        self._status_at = 0.0
        self.safe_mode = install_safe_mode(self)

    # --- outputs of the core ---------------------------------------------------------

    def _apply(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, PersistSeq):
                self.state.save(seq_reserved=out.reserved_until)
            elif isinstance(out, Publish):
                payload = encode(out.message)
                if out.durable:
                    self.outbox.put(
                        out.message.seq,
                        self.topics[out.kind],
                        payload,
                        out.message.ts,
                        out.samples,
                        clear_stash=out.kind is Kind.TELEMETRY,
                    )
                else:
                    mid = self.transport.publish(self.topics[out.kind], payload, retain=out.retain)
                    if mid is not None and self._link.inflight is not None:
                        self._link.inflight[mid] = None
            elif isinstance(out, RunCommand):
                # Run outside the transport's callbacks (never re-enter the MQTT loop).
                self._todo.append(out)

    # --- transport callbacks ---------------------------------------------------------

    def _on_connected(self) -> None:
        self.backoff.reset()
        self._outage_logged = False
        self.connected_since = self.clock.time()
        self._link = _Link(inflight={})
        log.info("connected to %s", self.config.broker_url)
        self._apply(
            self.core.presence(PresenceState.ONLINE, self.clock.time(), self.config.keepalive_s)
        )
        self._write_status()

    def _on_disconnected(self, reason: str) -> None:
        if self.connected_since is not None:
            log.warning("connection to %s lost: %s", self.config.broker_url, reason)
        self.connected_since = None
        self._link = _Link(inflight={})
        self._reconnect_at = self.clock.monotonic() + self.backoff.next_delay()
        self._write_status()

    def _on_published(self, mid: int, ok: bool) -> None:
        inflight = self._link.inflight or {}
        if mid not in inflight:
            return
        seq = inflight.pop(mid)
        if seq is None:
            return
        if not ok:
            log.error("broker refused message seq %d; dropping it", seq)
        self._acked.append(seq)

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        if topic_name != self.topics[Kind.COMMAND]:
            return
        self._apply(self.core.on_command_payload(payload, self.clock.time()))

    # --- commands --------------------------------------------------------------------

    def register_runner(self, kind: str, runner: Callable[[RunCommand], None]) -> None:
        """Carry out accepted commands of ``kind`` (e.g. the OTA work's ``install``).

        The runner is called in the loop's thread and must return quickly: long work goes
        to a worker thread that calls :meth:`report` when done."""
        self.runners[kind] = runner

    def report(
        self, command_id: str, ok: bool, detail: str = "", result: dict[str, Any] | None = None
    ) -> None:
        """Acknowledge a command's outcome (safe from any thread)."""
        self._results.put((command_id, ok, detail, result or {}))

    def _run_command(self, cmd: RunCommand) -> None:
        runner = self.runners.get(cmd.kind)
        if runner is None:  # a handler accepted something no adapter runs: report it
            self.report(cmd.command_id, False, f"no runner for {cmd.kind}")
            return
        runner(cmd)

    def _check_renewal(self, mono: float, wall: float) -> None:
        """Ask for a renewed certificate once it is due (checked hourly while connected)."""
        if self.renewal is None or not self.transport.connected or mono < self._renewal_check_at:
            return
        self._renewal_check_at = mono + RENEWAL_CHECK_S
        try:
            if not self.renewal.due(datetime.fromtimestamp(wall, UTC)):
                return
            csr = self.renewal.csr()
        except (OSError, ValueError) as exc:  # BundleError is a ValueError
            log.error("certificate renewal: cannot read the credentials: %s", exc)
            return
        log.info("certificate renewal due: sending a certificate request")
        self._apply(self.core.certificate_request(csr, wall))

    def _install_certificate(self, cmd: RunCommand) -> None:
        if self.renewal is None:
            self.report(cmd.command_id, False, "no [tls] bundle configured")
            return
        try:
            bundle = self.renewal.install_pem(cmd.params["certificate"], cmd.params["ca_chain"])
        except (OSError, ValueError) as exc:  # BundleError is a ValueError
            log.error("certificate renewal: refused the new certificate: %s", exc)
            self.report(cmd.command_id, False, str(exc)[:500])
            return
        serial = f"{bundle.certificate.serial_number:x}"
        log.info(
            "certificate renewed (serial %s, until %s); reconnecting", serial, bundle.not_after
        )
        self.report(cmd.command_id, True, result={"serial": serial})
        # The transport builds a new TLS context on every connect: reconnect to use it.
        self.transport.disconnect()
        self._reconnect_at = 0.0

    def _start_diagnostics(self, cmd: RunCommand) -> None:
        # Gather state here, in the loop's thread; only packing and upload run aside.
        sections = self.diagnostics_sections()
        lines = list(self.ring.lines) if self.ring else []
        threading.Thread(
            target=self._diagnostics_worker,
            args=(cmd, sections, lines),
            name="diagnostics",
            daemon=True,
        ).start()

    def _reboot(self, cmd: RunCommand) -> None:
        last = dict(self.state.data.get("last_run") or {})
        self.state.save(last_run={**last, "intended": int(RebootReason.REMOTE_COMMAND)})
        self._flush(self.clock.time())
        self._drain(2.0)
        log.warning(
            "rebooting on command %s: %s", cmd.command_id, " ".join(self.config.reboot_command)
        )
        ok, detail = self._run_reboot_command()
        if not ok:
            self.state.save(last_run={**last, "intended": None})
        self._apply(
            self.core.command_result(
                cmd.command_id,
                self.clock.time(),
                ok=ok,
                detail=detail if not ok else "reboot initiated",
            )
        )

    def _run_reboot_command(self) -> tuple[bool, str]:
        try:
            result = subprocess.run(
                list(self.config.reboot_command), capture_output=True, text=True, timeout=20
            )
            ok, detail = result.returncode == 0, (result.stderr or result.stdout).strip()[-500:]
            if not ok:
                detail = f"reboot command exited {result.returncode}: {detail}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, detail = False, f"reboot command failed: {exc}"
        if not ok:
            log.error("%s", detail)
        return ok, detail

    def _restart_for_update(self, reboot: bool) -> None:
        """Boot the freshly switched slot: reboot the device, or exit so systemd restarts
        the agent (``EXIT_RESTART``), after delivering what is queued."""
        from agent.updater import EXIT_RESTART

        last = dict(self.state.data.get("last_run") or {})
        self.state.save(last_run={**last, "intended": int(RebootReason.FIRMWARE_UPDATE)})
        if reboot:
            self._flush(self.clock.time())
            self._drain(2.0)
            ok, detail = self._run_reboot_command()
            if ok:
                return
            log.error("cannot reboot for the update (%s); restarting the agent instead", detail)
        log.warning("restarting the agent to boot the new slot")
        self.exit_code = EXIT_RESTART
        self.request_stop()

    def _diagnostics_worker(
        self, cmd: RunCommand, sections: dict[str, Any], lines: list[str]
    ) -> None:
        from agent.diagnostics import DiagnosticsError, build_bundle, deliver

        try:
            bundle = build_bundle(
                log_lines=lines,
                sections=sections,
                max_bytes=self.config.diagnostics_max_bytes,
            )
            result = deliver(
                bundle,
                upload_url=cmd.params.get("upload_url"),
                state_dir=self.state_dir,
                device_id=self.config.device_id,
            )
            self.report(cmd.command_id, True, "diagnostics bundle delivered", result.as_dict())
        except (DiagnosticsError, OSError) as exc:
            self.report(cmd.command_id, False, str(exc))
        except Exception as exc:  # report every failure as a failed ack, never crash
            log.exception("diagnostics failed")
            self.report(cmd.command_id, False, f"diagnostics failed: {exc}")

    def diagnostics_sections(self) -> dict[str, Any]:
        """What goes into a diagnostics bundle besides the logs."""
        last = self.core.last_sample
        unavailable = getattr(self.collector, "unavailable", {})
        return {
            "vitals": msgspec.to_builtins(last) if last else None,
            "unavailable_signals": dict(unavailable),
            "faults": self.core.faults.snapshot(),
            "config": self.config.redacted(),
            "versions": self.versions(),
            "status": self.status(),
        }

    # --- loop ------------------------------------------------------------------------

    def versions(self) -> dict[str, str]:
        """Agent, protocol, Python and device software versions."""
        import platform

        return {
            "agent": __version__,
            "protocol": SCHEMA_VERSION,
            "python": platform.python_version(),
            "software": self.core.software_version,
            "kernel": platform.release(),
        }

    def status(self) -> dict[str, Any]:
        """Local state for ``fleet-agent status``."""
        return {
            "pid": os.getpid(),
            "device_id": self.config.device_id,
            "boot_id": self.boot_id,
            "started_at": self.started_at,
            "reboot_reason": self.reboot_reason.name,
            "broker": self.config.broker_url,
            "connected": self.transport.connected if hasattr(self, "transport") else False,
            "connected_since": self.connected_since,
            "queue_depth": self.outbox.depth(),
            "queue_bytes": self.outbox.size_bytes(),
            "dropped_samples": self.outbox.dropped_samples,
            "dropped_messages": self.outbox.dropped_messages,
            "pending_samples": len(self.core.pending),
            "open_faults": {
                code: {"severity": c.severity.value, "since": c.ts, "value": c.value}
                for code, c in self.core.faults.open.items()
            },
            "versions": {
                "agent": __version__,
                "protocol": SCHEMA_VERSION,
                "software": self.core.software_version if hasattr(self, "core") else "",
            },
            "update": self.updater.summary() if self.updater is not None else None,
            "safe_mode": self.safe_mode.status() if hasattr(self, "safe_mode") else None,
            "updated_at": self.clock.time(),
        }

    def _write_status(self) -> None:
        try:
            atomic_write(self.state_dir / STATUS_FILE, msgspec.json.encode(self.status()))
        except OSError as exc:
            log.warning("cannot write status file: %s", exc)

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler or thread)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def _sample(self, wall: float) -> None:
        sample = sanitize(self.collector.collect(wall))
        self.outbox.stash(msgspec.json.encode(sample))
        outputs = self.core.on_sample(sample)
        self._apply(outputs)
        if any(isinstance(o, Publish) and o.kind is Kind.EVENT for o in outputs):
            # A fault was raised or cleared: persist rule state now, so a crash does not
            # make the next run raise (or clear) it again.
            self.state.save(core=self.core.snapshot())

    def _flush(self, wall: float) -> None:
        self._apply(self.core.flush(wall, self.outbox.dropped_samples))

    def _connect(self) -> None:
        will: list[Output] = []
        for out in self.core.presence(
            PresenceState.OFFLINE, self.clock.time(), self.config.keepalive_s
        ):
            if isinstance(out, PersistSeq):
                self._apply([out])
            else:
                will.append(out)
        assert isinstance(will[0], Publish)
        try:
            self.transport.connect(self.topics[Kind.PRESENCE], encode(will[0].message))
        except OSError as exc:
            delay = self.backoff.next_delay()
            self._reconnect_at = self.clock.monotonic() + delay
            level = logging.DEBUG if self._outage_logged else logging.WARNING
            self._outage_logged = True
            log.log(
                level, "cannot reach %s (%s); retrying in %.1fs", self.config.broker_url, exc, delay
            )

    def _pump(self) -> None:
        """Send queued messages in seq order, keeping at most the inflight window open."""
        if not self.transport.connected or self._link.inflight is None:
            return
        window = 20 - len(self._link.inflight)
        while window > 0:
            rows = self.outbox.after(self._link.cursor, window)
            if not rows:
                return
            for q in rows:
                mid = self.transport.publish(q.topic, q.payload)
                if mid is None:
                    return
                self._link.inflight[mid] = q.seq
                self._link.cursor = q.seq
                window -= 1

    def _commit_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.ack(acked)

    def step(self) -> None:
        """One iteration: run what is due, send, then wait for I/O until the next deadline."""
        mono, wall = self.clock.monotonic(), self.clock.time()
        if not self.transport.busy and mono >= self._reconnect_at:
            self._connect()
        self._check_renewal(mono, wall)
        if self.schedule.sample.due(mono):
            self._sample(wall)
        if self.schedule.publish.due(mono):
            self._flush(wall)
            self.outbox.prune(wall)
            self.state.save(core=self.core.snapshot())
            self._write_status()
        while True:
            try:
                command_id, ok, detail, result = self._results.get_nowait()
            except queue.Empty:
                break
            self._apply(
                self.core.command_result(command_id, wall, ok=ok, detail=detail, result=result)
            )
        while True:
            try:
                make, done = self._update_events.get_nowait()
            except queue.Empty:
                break
            self._apply(make(wall))
            done.set()
        while True:
            try:
                reboot = self._restart_requests.get_nowait()
            except queue.Empty:
                break
            self._restart_for_update(reboot)
        if self.notifier.watchdog_interval is not None and mono >= self._watchdog_at:
            self.notifier.watchdog()
            self._watchdog_at = mono + self.notifier.watchdog_interval
        self._pump()
        deadline = self.schedule.next_deadline()
        if not self.transport.busy:
            deadline = min(deadline, self._reconnect_at)
        if self.notifier.watchdog_interval is not None:
            deadline = min(deadline, self._watchdog_at)
        wait = min(max(deadline - self.clock.monotonic(), 0.0), MAX_LOOP_WAIT_S)
        if self.transport.busy:
            self.transport.loop(wait)
        elif wait > 0:
            self.clock.sleep(wait)
        self._commit_acks()
        while self._todo and not self._stop.is_set():
            self._run_command(self._todo.pop(0))

    def run(self) -> None:
        """Serve until :meth:`request_stop`, then shut down cleanly."""
        self.notifier.ready(f"device {self.config.device_id}")
        if self.updater is not None:
            self.updater.resume()
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self.step()
                    failures = 0
                except Exception:
                    # Unattended for years: an unexpected error (full disk, a bug on one
                    # code path) must not take the agent down; a persistent one exits
                    # so systemd restarts it (and the restart-loop fault reports it).
                    failures += 1
                    self.loop_errors_total += 1
                    log.exception("error in the agent loop (%d in a row)", failures)
                    if failures >= MAX_CONSECUTIVE_FAILURES:
                        raise
                    self.clock.sleep(min(float(failures), 10.0))
        finally:
            self.shutdown()

    def _drain(self, seconds: float) -> None:
        """Keep delivering until the outbox is empty or ``seconds`` passed."""
        deadline = self.clock.monotonic() + seconds
        while self.transport.connected and self.clock.monotonic() < deadline:
            self._pump()
            self.transport.loop(0.05)
            self._commit_acks()
            if self.outbox.depth() == 0 and not self._link.inflight:
                return

    def shutdown(self) -> None:
        """Flush the pending batch to the outbox, deliver what can be delivered quickly,
        say ``offline``, disconnect, and record a clean stop."""
        self.notifier.stopping()
        if self.updater is not None:
            self.updater.close()
        wall = self.clock.time()
        self._flush(wall)
        if self.transport.connected:
            self._drain(SHUTDOWN_DRAIN_S)
            self._apply(
                self.core.presence(
                    PresenceState.OFFLINE, self.clock.time(), self.config.keepalive_s
                )
            )
            self._drain(1.0)
        self.transport.disconnect()
        self._commit_acks()
        last = dict(self.state.data.get("last_run") or {})
        self.state.save(
            core=self.core.snapshot(),
            last_run={**last, "clean_stop": True, "stopped_at": wall},
            # After a clean stop the next start continues exactly here (no gap in seq).
            seq_reserved=self.core.seq.next_value,
        )
        self.connected_since = None
        self._write_status()
        log.info("stopped cleanly; %d messages stay queued", self.outbox.depth())
        self.outbox.close()


def open_outbox(path: Path, limits: Limits) -> SqliteOutbox:
    """Open the outbox; a corrupt database is set aside (kept for inspection, never
    deleted) and a fresh one started, so storage damage cannot stop the agent for good."""
    try:
        return SqliteOutbox(path, limits)
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is unreadable (%s); moved to %s, starting a new one", path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        return SqliteOutbox(path, limits)


def _previous_run(data: dict[str, Any]) -> PreviousRun | None:
    last = data.get("last_run")
    if not isinstance(last, dict):
        return None
    intended = last.get("intended")
    try:
        reason = RebootReason(intended) if isinstance(intended, int) else None
    except ValueError:
        reason = None
    kernel_boot = last.get("machine_boot_id")
    boot_id = last.get("boot_id")
    return PreviousRun(
        boot_id=boot_id if isinstance(boot_id, str) else None,
        machine_boot_id=kernel_boot if isinstance(kernel_boot, str) else None,
        clean_stop=last.get("clean_stop") is True,
        intended=reason,
    )


def _mqtt_settings(config: AgentConfig) -> MqttSettings:
    password = None
    if config.password_file is not None:
        password = config.password_file.read_text().strip()
    return MqttSettings(
        host=config.broker_host,
        port=config.broker_port,
        client_id=config.device_id,
        command_topic=topic(config.device_id, Kind.COMMAND),
        keepalive=config.keepalive_s,
        tls=config.broker_tls,
        ca=config.tls.ca,
        cert=config.tls.cert,
        key=config.tls.key,
        username=config.username,
        password=password,
    )
