"""One simulated device: simulated hardware driving the real agent core.

:class:`SimDevice` = :class:`~simulator.scenario.DeviceSpec` + :class:`SimulatedHardware`
+ :class:`~agent.core.agent_core.AgentCore` (the agent's fault rules, optionally adaptive
ones) + the agent's in-memory outbox (:class:`~agent.store.MemoryOutbox`) +
:class:`~agent.adapters.slots.SimulatedSlots`. It is pure: the caller owns the clock
(:meth:`SimDevice.advance_to` with *true* unix time) and the link
(:class:`Link`); the device stamps its messages with its own, possibly drifting, clock.

It behaves like the daemon (``agent/daemon.py``) where it matters for the data:

* samples are stashed as they are taken and batched every ``publish_interval_s``;
* every durable message goes through the outbox and leaves it in seq order only while a
  link is up, so partitions and broker outages are buffered (bounded, oldest dropped and
  counted) exactly as on a device;
* the fault engine's state is saved at every publish and on every fault change, and a
  reboot restores it from that save (what a crash between two saves loses is lost);
* each start gets a new ``boot_id`` and a ``Boot`` event with the hardware's typed reason
  (a simulated device knows why it reset, where a real agent often cannot tell);
* while the power is cut no agent runs and nothing is sampled.

The seq reservation, the saved fault state, the outbox and the slots survive reboots
(they are the device's disk); everything else is rebuilt at each boot.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgspec

from agent.adapters.slots import SimulatedSlots
from agent.core.agent_core import AgentCore
from agent.core.outputs import Output, Publish, RunCommand
from agent.core.rules import build_rules
from agent.core.sequence import SeqAllocator
from agent.output_applier import OutputApplier
from agent.store import Limits, MemoryOutbox
from protocol import (
    Boot,
    FaultCleared,
    FaultRaised,
    Kind,
    PresenceState,
    RebootReason,
    Sample,
    topic,
)
from simulator.hardware import SimulatedHardware
from simulator.hardware_params import Environment
from simulator.scenario_model import DeviceSpec

AGENT_VERSION = "sim-0.1.0"
_SAMPLE_DECODER = msgspec.json.Decoder(Sample)
_SAMPLE_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """The simulated agent's configuration (the daemon's config keys that matter here).

    ``faults`` is the agent's ``[faults]`` table (tuning, disabling, ``adaptive`` list);
    ``adaptive`` is a shortcut: a signal name per adaptive rule with default parameters.
    """

    sample_interval_s: float = 60.0
    publish_interval_s: float = 60.0
    keepalive_s: int = 30
    software_version: str = "1.0.0"
    buffer_max_bytes: int = 50 * 1024 * 1024
    buffer_max_age_s: float = 7 * 86400.0
    faults: Mapping[str, Any] = field(default_factory=dict)
    adaptive: tuple[str, ...] = ()

    def fault_config(self) -> dict[str, Any]:
        """The ``[faults]`` table with the ``adaptive`` shortcut merged in."""
        config = dict(self.faults)
        extra = [{"signal": s} for s in self.adaptive]
        if extra:
            config["adaptive"] = [*list(config.get("adaptive", [])), *extra]
        return config


class Link(Protocol):
    """Where a device's messages go: a broker connection or an in-memory sink."""

    def up(self, device: SimDevice) -> bool:
        """True while the device can deliver (connected)."""
        ...

    def window(self, device: SimDevice) -> int:
        """How many more outbox messages may be handed over before acks come back."""
        ...

    def deliver(
        self, device: SimDevice, kind: Kind, payload: bytes, retain: bool, seq: int | None
    ) -> bool:
        """Hand one message over (``seq`` None: not from the outbox); False when the link
        cannot take it now. Outbox messages are confirmed later with ``device.acked``."""
        ...


@dataclass(slots=True)
class DeviceStats:
    """Counters the progress display and the summary read."""

    samples: int = 0
    messages_sent: int = 0
    faults_raised: int = 0
    faults_cleared: int = 0
    boots: int = 0
    open_faults: dict[str, float] = field(default_factory=dict)


def boot_id_for(seed: int, device_id: str, boot_number: int, nonce: str = "") -> str:
    """A boot id (UUID-shaped) from the seed, device and boot count, and the run's
    ``nonce``: deterministic offline (no nonce); a live run passes a fresh nonce so a
    rerun with the same seed starts new boots the server does not deduplicate away."""
    key = f"{seed}\x1f{device_id}\x1f{boot_number}" + (f"\x1f{nonce}" if nonce else "")
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def phase_of(seed: int, device_id: str, period: float) -> float:
    """A device's deterministic offset in ``[0, period)``: devices do not all sample at once."""
    digest = hashlib.sha256(f"{seed}\x1fphase\x1f{device_id}".encode()).digest()
    return period * int.from_bytes(digest[:8], "little") / 2**64


Runner = Callable[["SimDevice", RunCommand, float], None]


class DeviceExtension(Protocol):
    """Timed work a device carries beside the agent core (the agent's update driver)."""

    def on_boot(self, device: SimDevice, t: float) -> None:
        """Called after every start, once the new agent core runs."""
        ...

    def step(self, device: SimDevice, t: float) -> None:
        """Do what is due by true time ``t`` (only called while the device runs)."""
        ...

    def next_due(self) -> float | None:
        """True time of the next due work, or None."""
        ...


class SimDevice:
    """A simulated device running the real agent core; advance it with :meth:`advance_to`."""

    def __init__(
        self,
        spec: DeviceSpec,
        hardware: SimulatedHardware,
        settings: AgentSettings | None = None,
        *,
        start: float,
        tick_s: float = 10.0,
        environment: Callable[[DeviceSpec, float], Environment] | None = None,
        link_allowed: Callable[[str, float], bool] | None = None,
        boot_nonce: str = "",
    ) -> None:
        """``environment(spec, t)`` gives the surroundings at true time ``t`` (default: the
        spec's region, always powered); ``link_allowed(device_id, t)`` is False during a
        partition or broker outage (default: always allowed); ``boot_nonce`` is mixed
        into every boot id (see :func:`boot_id_for`)."""
        self.boot_nonce = boot_nonce
        self.spec = spec
        self.device_id = spec.device_id
        self.hw = hardware
        self.settings = settings or AgentSettings()
        self.tick_s = float(tick_s)
        self._environment = environment or (lambda s, t: s.environment(t))
        self._link_allowed = link_allowed or (lambda d, t: True)
        self.topics = {kind: topic(spec.device_id, kind) for kind in Kind}
        self.outbox = MemoryOutbox(
            Limits(self.settings.buffer_max_bytes, self.settings.buffer_max_age_s)
        )
        self.slots = SimulatedSlots(self.settings.software_version)
        self._todo: list[RunCommand] = []
        self._pending_direct: list[tuple[Kind, bytes, bool]] = []
        self.applier = OutputApplier(
            spec.device_id,
            self.outbox,
            persist_seq=self._persist_seq,
            send_direct=self._send_direct,
            run=self._todo.append,
            observe=self._count_faults,
        )
        self.stats = DeviceStats()
        self.index = 0
        """Position in the engine's device list (set by the live engine)."""
        self.runners: dict[str, Runner] = {"reboot": _run_reboot}
        self.extensions: list[DeviceExtension] = []
        """Timed work beside the core, e.g. :class:`simulator.update_backends.DeviceUpdates`."""
        self._fault_config = self.settings.fault_config()
        build_rules(self._fault_config)  # fail early on a bad [faults] table
        # the device's "disk": survives reboots
        self._seq_reserved = 0
        self._saved_core: dict[str, Any] | None = None
        self._boot_number = 0
        self._last_boot_id: str | None = None
        self._starts: list[float] = []
        # per boot
        self.core: AgentCore | None = None
        self._connected = False
        self._will: bytes | None = None
        self._cursor = -1
        self.t = float(start)
        self._start = float(start)
        self._phase = phase_of(spec.seed, spec.device_id, self.settings.sample_interval_s)
        self._next_sample = start + self._phase
        self._next_publish = start + self._phase + self.settings.publish_interval_s
        self._boot(RebootReason.POWER_ON, self.t)

    # --- clock -------------------------------------------------------------------------

    def device_time(self, t: float | None = None) -> float:
        """The device's own clock at true time ``t`` (true time plus its clock offset)."""
        true = self.t if t is None else t
        return max(0.0, true + self.hw.state.clock_offset_s)

    @property
    def running(self) -> bool:
        """True while powered and the agent runs."""
        return self.core is not None

    @property
    def boot_number(self) -> int:
        """How many times the device has started (a connection belongs to one boot)."""
        return self._boot_number

    @property
    def connected(self) -> bool:
        """True while the device considers its link up."""
        return self._connected

    # --- lifecycle ---------------------------------------------------------------------

    def _boot(self, reason: RebootReason, t: float) -> None:
        self._boot_number += 1
        boot_id = boot_id_for(self.spec.seed, self.device_id, self._boot_number, self.boot_nonce)
        wall = self.device_time(t)
        recent = [s for s in self._starts if 0 <= wall - s <= 86400.0][-19:]
        self._starts = [*recent, wall]
        max_seq = self.outbox.max_seq()
        seq = SeqAllocator(self._seq_reserved, floor=(max_seq + 1) if max_seq is not None else 0)
        status = self.slots.status()
        core = AgentCore(
            self.device_id,
            boot_id,
            seq=seq,
            rules=build_rules(self._fault_config, self._starts),
            agent_version=AGENT_VERSION,
            software_version=status.running_version or "",
        )
        if self._saved_core is not None:
            core.restore(self._saved_core)
        stashed = [_SAMPLE_DECODER.decode(raw) for raw in self.outbox.stashed()]
        core.restore_pending(stashed)
        self.core = core
        self.stats.boots += 1
        self._todo.clear()
        out = []
        for item in core.boot(wall, reason, self._last_boot_id):
            if isinstance(item, Publish) and isinstance(item.message, Boot):
                message = msgspec.structs.replace(item.message, slot=status.running)
                item = replace(item, message=message)
            out.append(item)
        self.apply(out)
        self._last_boot_id = boot_id
        for extension in self.extensions:
            extension.on_boot(self, t)

    def _power_off(self) -> None:
        """The power is cut: the agent dies without a clean stop; the link drops."""
        self.core = None
        self._connected = False
        self._cursor = -1
        self._pending_direct.clear()

    # --- outputs of the core -----------------------------------------------------------

    def apply(self, outputs: list[Output]) -> None:
        """Carry out the agent core's outputs (the agent's one output applier)."""
        self.applier.apply(outputs)

    def _persist_seq(self, reserved_until: int) -> None:
        self._seq_reserved = reserved_until

    def _send_direct(self, kind: Kind, topic_name: str, payload: bytes, retain: bool) -> None:
        self._pending_direct.append((kind, payload, retain))

    def _count_faults(self, out: Publish) -> None:
        msg = out.message
        if isinstance(msg, FaultRaised):
            self.stats.faults_raised += 1
            self.stats.open_faults[msg.code] = msg.ts
        elif isinstance(msg, FaultCleared):
            self.stats.faults_cleared += 1
            self.stats.open_faults.pop(msg.code, None)

    # --- stepping ----------------------------------------------------------------------

    def advance_to(self, t_end: float, link: Link, *, final: bool = False) -> None:
        """Run the device from its current true time up to ``t_end``.

        The hardware moves on a fixed grid: steps end on multiples of ``tick_s`` from the
        start and at every sample and publish deadline. A step that would end after
        ``t_end`` waits for the next call (unless ``final``), so the result depends only
        on the device and the times reached, never on how the caller slices time.
        Messages leave through ``link`` while it is up.
        """
        eps = 1e-9
        while self.t < t_end - eps:
            grid = self._start + self.tick_s * (
                math.floor((self.t - self._start) / self.tick_s + eps) + 1
            )
            nxt = grid
            if self.core is not None:
                nxt = min(nxt, max(self._next_sample, self.t + 1e-6))
                nxt = min(nxt, max(self._next_publish, self.t + 1e-6))
            if nxt > t_end + eps:
                if not final:
                    return
                nxt = t_end
            self.hw.step(nxt - self.t, self._environment(self.spec, nxt))
            self.t = nxt
            for record in self.hw.drain_boots():
                self._power_off()
                self._boot(record.reason, record.t)
            if not self.hw.is_on:
                if self.core is not None:
                    self._power_off()
                self._sync_link(link)
                continue
            if self.core is None:  # pragma: no cover - a power-on always drains a boot
                self._boot(RebootReason.POWER_LOSS, self.t)
            self._run_due(link)

    def _run_due(self, link: Link) -> None:
        core = self.core
        assert core is not None
        if self.t >= self._next_sample - 1e-9:
            interval = self.settings.sample_interval_s
            self._next_sample = _next_after(self._next_sample, interval, self.t)
            sample = self.hw.sample(self.t)
            self.outbox.stash(_SAMPLE_ENCODER.encode(sample))
            self.stats.samples += 1
            outputs = core.on_sample(sample)
            self.apply(outputs)
            if any(isinstance(o, Publish) and o.kind is Kind.EVENT for o in outputs):
                self._saved_core = core.snapshot()
        if self.t >= self._next_publish - 1e-9:
            self._next_publish = _next_after(
                self._next_publish, self.settings.publish_interval_s, self.t
            )
            wall = self.device_time()
            self.apply(core.flush(wall, self.outbox.dropped_samples))
            self.outbox.prune(wall)
            self._saved_core = core.snapshot()
        for extension in self.extensions:
            if self.core is not None:
                extension.step(self, self.t)
        if self._todo:
            self.handle_commands(link)
        else:
            self._sync_link(link)

    def handle_commands(self, link: Link) -> None:
        """Carry out accepted commands now (the daemon's runners, simulated)."""
        self._sync_link(link)
        while self._todo and self.core is not None:
            cmd = self._todo.pop(0)
            runner = self.runners.get(cmd.kind)
            if runner is None:
                self.apply(
                    self.core.command_result(
                        cmd.command_id,
                        self.device_time(),
                        ok=False,
                        detail=f"no runner for {cmd.kind} in the simulator",
                    )
                )
            else:
                runner(self, cmd, self.t)
        self._sync_link(link)

    def stop(self) -> None:
        """A clean agent stop: the pending samples become a batch in the outbox."""
        if self.core is not None:
            self.apply(self.core.flush(self.device_time(), self.outbox.dropped_samples))
            self._saved_core = self.core.snapshot()

    def say_offline(self) -> None:
        """Queue the explicit ``offline`` presence of a clean stop (sent while connected)."""
        if self.core is not None:
            self.apply(
                self.core.presence(
                    PresenceState.OFFLINE, self.device_time(), self.settings.keepalive_s
                )
            )

    # --- link --------------------------------------------------------------------------

    def next_wake(self) -> float:
        """The true time at which the device next has something to do."""
        if self.core is None:
            return self.t + self.tick_s
        wake = min(self.t + self.tick_s, self._next_sample, self._next_publish)
        for extension in self.extensions:
            due = extension.next_due()
            if due is not None:
                wake = min(wake, max(due, self.t))
        return wake

    def link_allowed(self, t: float | None = None) -> bool:
        """False while the scenario cuts this device off (partition, broker outage)."""
        return self.core is not None and self._link_allowed(
            self.device_id, self.t if t is None else t
        )

    def will_payload(self) -> bytes:
        """Build the retained ``offline`` last will for a new connection (uses a seq)."""
        assert self.core is not None
        self._will = self.applier.last_will(
            self.core.presence(PresenceState.OFFLINE, self.device_time(), self.settings.keepalive_s)
        )
        return self._will

    def on_connected(self) -> None:
        """The link came up: announce ``online`` (retained, not queued)."""
        self._connected = True
        if self.core is not None:
            self.apply(
                self.core.presence(
                    PresenceState.ONLINE, self.device_time(), self.settings.keepalive_s
                )
            )

    def on_disconnected(self) -> None:
        """The link went down: messages wait in the outbox from now on (unacked ones are
        sent again on the next connection)."""
        self._connected = False
        self._cursor = -1
        self._pending_direct.clear()

    def on_command(self, payload: bytes) -> None:
        """A payload arrived on the device's command topic."""
        if self.core is not None:
            self.apply(self.core.on_command_payload(payload, self.device_time()))

    def _sync_link(self, link: Link) -> None:
        """Deliver what is queued while the link is up: direct messages first, then the
        outbox in seq order within the link's in-flight window. A message leaves the
        outbox only when :meth:`acked` is called for it (the broker's PUBACK)."""
        if not link.up(self):
            self._pending_direct.clear()
            return
        direct, self._pending_direct = self._pending_direct, []
        for kind, payload, retain in direct:
            if link.deliver(self, kind, payload, retain, None):
                self.stats.messages_sent += 1
        while True:
            window = link.window(self)
            if window <= 0:
                return
            rows = self.outbox.after(self._cursor, window)
            if not rows:
                return
            for q in rows:
                kind = Kind(q.topic.rsplit("/", 1)[1])
                if not link.deliver(self, kind, q.payload, False, q.seq):
                    return
                self._cursor = max(self._cursor, q.seq)

    def acked(self, seqs: list[int]) -> None:
        """The link confirmed delivery of these outbox messages: forget them."""
        self.outbox.ack(seqs)
        self.stats.messages_sent += len(seqs)

    def pump(self, link: Link) -> None:
        """Deliver queued messages now (after a connection or an ack freed the window)."""
        self._sync_link(link)

    def reboot(self, reason: RebootReason) -> None:
        """Restart the device now (commanded or after an update)."""
        self._saved_core = self.core.snapshot() if self.core is not None else self._saved_core
        self.hw.reboot(reason)


def _next_after(current: float, interval: float, now: float) -> float:
    """The next deadline after ``now`` on the grid ``current + k·interval`` (no bursts)."""
    nxt = current + interval
    if nxt <= now:
        nxt = current + interval * (math.floor((now - current) / interval) + 1)
    return nxt


def _run_reboot(device: SimDevice, cmd: RunCommand, t: float) -> None:
    """The ``reboot`` command: flush, acknowledge, then reset with ``REMOTE_COMMAND``."""
    core = device.core
    assert core is not None
    wall = device.device_time()
    device.apply(core.flush(wall, device.outbox.dropped_samples))
    device.apply(core.command_result(cmd.command_id, wall, ok=True, detail="reboot initiated"))
    device.reboot(RebootReason.REMOTE_COMMAND)


__all__ = [
    "AGENT_VERSION",
    "AgentSettings",
    "DeviceExtension",
    "DeviceStats",
    "Link",
    "SimDevice",
    "boot_id_for",
    "phase_of",
]
