"""The agent daemon: wires the pure core to the clock, collectors, outbox and MQTT.

One thread does everything: it sleeps inside the MQTT transport's network loop until
the next sample, publish, reconnect or watchdog deadline. Commands that can take long
(diagnostics upload) run in a short-lived worker thread and report back through a queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.collectors import Collector, SystemCollector
from agent.command_runners import DaemonCommands
from agent.config import AgentConfig
from agent.core.agent_core import AgentCore
from agent.core.outputs import Output, Publish, RunCommand
from agent.core.reboot import classify_start, recent_starts
from agent.core.rules import build_rules
from agent.core.schedule import Backoff, Schedule
from agent.core.sequence import SeqAllocator
from agent.delivery import ACK_TIMEOUT_S, Delivery
from agent.logs import RingHandler
from agent.output_applier import OutputApplier
from agent.safe_mode import install as install_safe_mode
from agent.sdnotify import Notifier
from agent.startup import machine_boot_id, mqtt_settings, open_outbox, previous_run
from agent.state import StateFile, atomic_write
from agent.store import Limits, Outbox
from agent.transport import MqttTransport, Transport, TransportEvents
from agent.update_host import DaemonUpdateHost, UpdateRequests
from protocol import (
    SCHEMA_VERSION,
    CheckUpdate,
    Install,
    Kind,
    PresenceState,
    Sample,
    topic,
)

if TYPE_CHECKING:
    from agent.renewal import CertificateRenewal
    from agent.updater import Updater

__all__ = ["AgentDaemon", "sanitize"]

log = logging.getLogger("agent")

SHUTDOWN_DRAIN_S = 5.0
"""At SIGTERM, how long to keep delivering queued messages before disconnecting."""
STATUS_FILE = "status.json"
MAX_LOOP_WAIT_S = 1.0
MAX_CONSECUTIVE_FAILURES = 30


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
        reconnect_max_s: float | None = None,
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
        self._todo: list[RunCommand] = []
        self.update_requests = UpdateRequests()
        self.applier = OutputApplier(
            config.device_id,
            self.outbox,
            persist_seq=lambda reserved: self.state.save(seq_reserved=reserved),
            send_direct=lambda _kind, name, payload, retain: self.delivery.send_direct(
                name, payload, retain
            ),
            # Run outside the transport's callbacks (never re-enter the MQTT loop).
            run=self._todo.append,
        )
        self.exit_code = 0
        """What ``fleet-agent run`` exits with (``EXIT_RESTART`` after an update switch)."""
        self.loop_errors_total = 0
        self.commands = DaemonCommands(self)
        self.runners: dict[str, Callable[[RunCommand], None]] = self.commands.runners()
        self.renewal: CertificateRenewal | None = None
        if config.tls.bundle:
            # Imported only when used: cryptography costs ~8 MB of RSS on every device.
            from agent.renewal import CertificateRenewal

            self.renewal = CertificateRenewal(config.tls.bundle)
        self.connected_since: float | None = None
        backoff_max = config.reconnect_max_s if reconnect_max_s is None else reconnect_max_s
        self.backoff = Backoff(
            initial=min(config.reconnect_min_s, backoff_max), maximum=backoff_max
        )
        self._reconnect_at = 0.0
        self.started_at = self.clock.time()
        self.updater: Updater | None = None
        software_version = config.software_version
        if config.updates.enabled:
            from agent.updater import Updater

            self.updater = Updater(
                config.updates,
                self.state_dir,
                DaemonUpdateHost(self),
                agent_version=__version__,
                tls=config.tls,
            )
            software_version = self.updater.running_version() or software_version
            self.runners["install"] = self.updater.start_install
            self.runners["check_update"] = self.updater.start_check

        wall = self.clock.time()
        kernel_boot = machine_boot_id()
        previous = previous_run(data)
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
            refused = self.core.restore(core_state)
            if refused:
                log.warning(
                    "saved learned state of fault rule(s) %s refused (corrupt, or saved under"
                    " another configuration): they learn again from scratch",
                    ", ".join(sorted(refused)),
                )
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
        self.apply(
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
            transport = MqttTransport(mqtt_settings(config), events, queue_depth=self.outbox.depth)
        else:
            transport.events = events
        self.transport = transport
        self.delivery = Delivery(self.outbox, transport, self.clock.monotonic)
        self.schedule = Schedule(
            config.sample_interval_s, config.publish_interval_s, self.clock.monotonic()
        )
        self._watchdog_at = 0.0
        self._status_at = 0.0
        self.safe_mode = install_safe_mode(self)

    # --- outputs of the core ---------------------------------------------------------

    def apply(self, outputs: list[Output]) -> None:
        """Carry out the core's outputs (the agent's one output applier)."""
        self.applier.apply(outputs)

    # --- transport callbacks ---------------------------------------------------------

    def _on_connected(self) -> None:
        self.backoff.reset()
        self.connected_since = self.clock.time()
        self.delivery.reset()
        log.info("connected to %s", self._node_url())
        self.apply(
            self.core.presence(
                PresenceState.ONLINE,
                self.clock.time(),
                self.config.keepalive_s,
                self.config.publish_interval_s,
            )
        )
        self._write_status()

    def _on_disconnected(self, reason: str) -> None:
        if self.connected_since is not None:
            log.warning("connection to %s lost: %s", self._node_url(), reason)
        self.connected_since = None
        self.delivery.reset()
        self._reconnect_at = self.clock.monotonic() + self.backoff.next_delay()
        self._write_status()

    def _node_url(self) -> str:
        """The node of a broker cluster in use (``broker = [...]``), else the broker."""
        node = getattr(self.transport, "node", None)
        if node is None or not self.config.broker_alternates:
            return self.config.broker_url
        return f"{'mqtts' if self.config.broker_tls else 'mqtt'}://{node[0]}:{node[1]}"

    def _on_published(self, mid: int, ok: bool) -> None:
        self.delivery.on_published(mid, ok)

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        if topic_name != self.topics[Kind.COMMAND]:
            return
        self.apply(self.core.on_command_payload(payload, self.clock.time()))

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

    def reconnect_now(self) -> None:
        """Connect again at the next loop iteration (e.g. with a renewed certificate)."""
        self._reconnect_at = 0.0

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
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler or thread).

        The updater hears it at once too, so no queued update work starts after it."""
        self._stop.set()
        if self.updater is not None:
            self.updater.close()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self._stop.is_set()

    def _sample(self, wall: float) -> None:
        sample = sanitize(self.collector.collect(wall))
        self.outbox.stash(msgspec.json.encode(sample))
        outputs = self.core.on_sample(sample)
        self.apply(outputs)
        if any(isinstance(o, Publish) and o.kind is Kind.EVENT for o in outputs):
            # A fault was raised or cleared: persist rule state now, so a crash does not
            # make the next run raise (or clear) it again.
            self.state.save(core=self.core.snapshot())

    def flush(self, wall: float) -> None:
        """Turn the pending samples into a telemetry batch in the outbox."""
        self.apply(self.core.flush(wall, self.outbox.dropped_samples))

    def _connect(self) -> None:
        will = self.applier.last_will(
            self.core.presence(
                PresenceState.OFFLINE,
                self.clock.time(),
                self.config.keepalive_s,
                self.config.publish_interval_s,
            )
        )
        try:
            self.transport.connect(self.topics[Kind.PRESENCE], will)
        except OSError as exc:
            delay = self.backoff.next_delay()
            self._reconnect_at = self.clock.monotonic() + delay
            # The transport logged the failure and its reason (and, at most once a
            # minute, how much is queued); only the retry delay is left to say.
            log.debug("cannot reach %s (%s); retrying in %.1fs", self.config.broker_url, exc, delay)

    def step(self) -> None:
        """One iteration: run what is due, send, then wait for I/O until the next deadline."""
        mono, wall = self.clock.monotonic(), self.clock.time()
        if not self.transport.busy and mono >= self._reconnect_at:
            self._connect()
        self.commands.check_renewal(mono, wall)
        if self.schedule.sample.due(mono):
            self._sample(wall)
        if self.schedule.publish.due(mono):
            self.flush(wall)
            self.outbox.prune(wall)
            self.state.save(core=self.core.snapshot())
            self._write_status()
        while True:
            try:
                command_id, ok, detail, result = self._results.get_nowait()
            except queue.Empty:
                break
            self.apply(
                self.core.command_result(command_id, wall, ok=ok, detail=detail, result=result)
            )
        self.update_requests.drain_reports(wall, self.apply)
        for reboot in self.update_requests.drain_restarts():
            self.commands.restart_for_update(reboot)
        if self.notifier.watchdog_interval is not None and mono >= self._watchdog_at:
            self.notifier.watchdog()
            self._watchdog_at = mono + self.notifier.watchdog_interval
        self.delivery.pump()
        if self.transport.connected and self.delivery.stalled():
            log.warning("no PUBACK for %gs on a live connection; reconnecting", ACK_TIMEOUT_S)
            self.transport.disconnect()
            self._on_disconnected("acknowledgements stalled")
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
        self.delivery.commit_acks()
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

    def drain(self, seconds: float) -> None:
        """Keep delivering until the outbox is empty or ``seconds`` passed."""
        deadline = self.clock.monotonic() + seconds
        while self.transport.connected and self.clock.monotonic() < deadline:
            self.delivery.pump()
            self.transport.loop(0.05)
            self.delivery.commit_acks()
            if self.delivery.settled:
                return

    def shutdown(self) -> None:
        """Flush the pending batch to the outbox, deliver what can be delivered quickly,
        say ``offline``, disconnect, and record a clean stop."""
        self.notifier.stopping()
        if self.updater is not None:
            self.updater.close()
        wall = self.clock.time()
        self.flush(wall)
        if self.transport.connected:
            self.drain(SHUTDOWN_DRAIN_S)
            self.apply(
                self.core.presence(
                    PresenceState.OFFLINE,
                    self.clock.time(),
                    self.config.keepalive_s,
                    self.config.publish_interval_s,
                )
            )
            self.drain(1.0)
        self.transport.disconnect()
        self.delivery.commit_acks()
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
