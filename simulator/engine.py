"""Running a scenario: build the devices, advance them, collect what they send.

Two modes share :class:`~simulator.device.SimDevice`:

* **offline** (:func:`run_offline`): no broker; every device advances in simulated time
  as fast as the CPU allows and its messages go to a :class:`MemorySink`, which plays the
  broker (connections, last wills, QoS 1 acks) in memory. The result is deterministic
  for a scenario and seed, whatever the order of the devices: :attr:`MemorySink.digest`
  hashes every message of every device (in device-id order, each device's messages in
  the order they were delivered).
* **live** (:mod:`simulator.live`): each device holds its own MQTT connection to a real
  broker, all driven by one asyncio event loop, in real or scaled time.

Scenario ``publish`` / ``rollout`` events need the fleet server; offline they are only
reported in the summary (``hooks``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from agent.core.rules import RuleConfigError, build_rules
from protocol import Kind, PresenceState, decode
from simulator.device import AgentSettings, SimDevice
from simulator.fleet_builder import build_fleet
from simulator.scenario import ScenarioError
from simulator.scenario_model import DeviceSpec, Scenario
from simulator.timeline import Timeline


def agent_settings(scenario: Scenario, adaptive: Iterable[str] = ()) -> AgentSettings:
    """The simulated agents' settings from the scenario's ``[agent]`` table.

    Raises :class:`ScenarioError` naming the key when the ``faults`` table is invalid.
    """
    table = dict(scenario.agent)
    settings = AgentSettings(
        sample_interval_s=scenario.sample_interval_s,
        publish_interval_s=float(table.get("publish_interval_s", 60.0)),
        keepalive_s=int(table.get("keepalive_s", 30)),
        software_version=str(table.get("software_version", "1.0.0")),
        buffer_max_bytes=int(table.get("buffer_max_bytes", 50 * 1024 * 1024)),
        buffer_max_age_s=float(table.get("buffer_max_age_s", 7 * 86400.0)),
        faults=dict(table.get("faults", {})),
        adaptive=(*tuple(table.get("adaptive", ())), *tuple(adaptive)),
    )
    try:
        build_rules(settings.fault_config())
    except RuleConfigError as exc:
        raise ScenarioError([f"agent.{exc}"], scenario.name) from None
    return settings


def build_devices(
    scenario: Scenario,
    settings: AgentSettings | None = None,
    *,
    fleet: Sequence[DeviceSpec] | None = None,
    timeline: Timeline | None = None,
    boot_nonce: str = "",
) -> list[SimDevice]:
    """One :class:`SimDevice` per device of the scenario, wired to its timeline
    (``boot_nonce``: mixed into boot ids, fresh for each live run)."""
    fleet = list(fleet) if fleet is not None else build_fleet(scenario)
    timeline = timeline or Timeline(scenario, fleet)
    settings = settings or agent_settings(scenario)

    def link_allowed(device_id: str, t: float) -> bool:
        return not timeline.partitioned(device_id, t) and not timeline.broker_down(t)

    return [
        SimDevice(
            spec,
            timeline.make_hardware(spec),
            settings,
            start=scenario.start,
            tick_s=scenario.tick_s,
            environment=timeline.environment,
            link_allowed=link_allowed,
            boot_nonce=boot_nonce,
        )
        for spec in fleet
    ]


@dataclass
class _Conn:
    connected: bool = False
    will: bytes | None = None
    boot: int = 0


class MemorySink:
    """The broker of offline mode: connections, retained last wills, QoS 1 acks.

    A device is connected while its timeline allows a link; connecting stores its last
    will, losing the link (partition, outage, power cut, reboot) publishes it, as the
    broker does when a connection dies, and the new boot connects again. ``write``
    (optional) receives every message as ``(device_id, kind, payload)``; :attr:`digest`
    is a hash of everything delivered.
    """

    def __init__(self, write: Callable[[str, Kind, bytes], None] | None = None) -> None:
        self._write = write
        self._conns: dict[str, _Conn] = {}
        self._hashes: dict[str, Any] = {}
        self.counts: Counter[str] = Counter()
        self.messages = 0
        self.bytes = 0

    def _record(self, device_id: str, kind: Kind, payload: bytes) -> None:
        h = self._hashes.get(device_id)
        if h is None:
            h = self._hashes[device_id] = hashlib.sha256()
        h.update(kind.value.encode())
        h.update(len(payload).to_bytes(4, "little"))
        h.update(payload)
        self.counts[kind.value] += 1
        self.messages += 1
        self.bytes += len(payload)
        if self._write is not None:
            self._write(device_id, kind, payload)

    def up(self, device: SimDevice) -> bool:
        """Connect or disconnect the device as its timeline says; True while connected."""
        conn = self._conns.get(device.device_id)
        if conn is None:
            conn = self._conns[device.device_id] = _Conn()
        allowed = device.link_allowed()
        if conn.connected and (not allowed or conn.boot != device.boot_number):
            # link cut, power cut or reboot: the broker publishes the last will
            conn.connected = False
            if conn.will is not None:
                self._record(device.device_id, Kind.PRESENCE, conn.will)
            conn.will = None
            if device.connected:
                device.on_disconnected()
        if allowed and not conn.connected:
            conn.will = device.will_payload()
            conn.connected = True
            conn.boot = device.boot_number
            device.on_connected()
        return conn.connected

    def window(self, device: SimDevice) -> int:
        """Acks come back at once: no limit."""
        return 1000

    def deliver(
        self, device: SimDevice, kind: Kind, payload: bytes, retain: bool, seq: int | None
    ) -> bool:
        """Record the message and acknowledge it."""
        self._record(device.device_id, kind, payload)
        if seq is not None:
            device.acked([seq])
        return True

    @property
    def digest(self) -> str:
        """sha256 over every device's message stream, in device-id order."""
        total = hashlib.sha256()
        for device_id in sorted(self._hashes):
            total.update(device_id.encode())
            total.update(self._hashes[device_id].digest())
        return total.hexdigest()


@dataclass
class FleetSnapshot:
    """What the progress display and the summary show."""

    sim_time: float
    devices: int
    running: int
    online: int
    samples: int
    messages: int
    faults_raised: int
    faults_cleared: int
    boots: int
    queued: int
    dropped_samples: int
    open_faults: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "sim_time": self.sim_time,
            "devices": self.devices,
            "running": self.running,
            "online": self.online,
            "samples": self.samples,
            "messages": self.messages,
            "faults_raised": self.faults_raised,
            "faults_cleared": self.faults_cleared,
            "boots": self.boots,
            "queued": self.queued,
            "dropped_samples": self.dropped_samples,
            "open_faults": dict(sorted(self.open_faults.items())),
        }


def snapshot(devices: Sequence[SimDevice], sim_time: float) -> FleetSnapshot:
    """Totals over the fleet at ``sim_time``."""
    open_faults: Counter[str] = Counter()
    for d in devices:
        open_faults.update(d.stats.open_faults.keys())
    return FleetSnapshot(
        sim_time=sim_time,
        devices=len(devices),
        running=sum(1 for d in devices if d.running),
        online=sum(1 for d in devices if d.connected),
        samples=sum(d.stats.samples for d in devices),
        messages=sum(d.stats.messages_sent for d in devices),
        faults_raised=sum(d.stats.faults_raised for d in devices),
        faults_cleared=sum(d.stats.faults_cleared for d in devices),
        boots=sum(d.stats.boots for d in devices),
        queued=sum(d.outbox.depth() for d in devices),
        dropped_samples=sum(d.outbox.dropped_samples for d in devices),
        open_faults=dict(open_faults),
    )


@dataclass
class RunResult:
    """The outcome of an offline run."""

    final: FleetSnapshot
    digest: str
    messages_by_kind: dict[str, int]
    hooks: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the summary of ``fleet-sim run --json``)."""
        return {
            **self.final.as_dict(),
            "digest": self.digest,
            "messages_by_kind": dict(sorted(self.messages_by_kind.items())),
            "hooks": self.hooks,
        }


def run_offline(
    scenario: Scenario,
    devices: Sequence[SimDevice],
    sink: MemorySink,
    *,
    slice_s: float = 3600.0,
    progress: Callable[[FleetSnapshot], None] | None = None,
    timeline: Timeline | None = None,
) -> RunResult:
    """Advance every device to the scenario's end in slices of simulated time.

    Devices are independent offline, so the slicing (which only paces the progress
    callback) and the device order do not change a single byte that is produced. At the
    end every agent stops cleanly (pending samples batched and delivered, ``offline``).
    """
    end = scenario.start + scenario.duration_s
    t = scenario.start
    hooks: list[dict[str, Any]] = []
    while t < end:
        nxt = min(end, t + slice_s)
        if timeline is not None:
            for ev in timeline.hooks_due(t, nxt):
                hooks.append(
                    {
                        "at": scenario.start + ev.at,
                        "kind": ev.kind,
                        "params": ev.params,
                        "status": "skipped: publish/rollout events are not executed yet",
                    }
                )
        for device in devices:
            device.advance_to(nxt, sink, final=nxt >= end)
        t = nxt
        if progress is not None:
            progress(snapshot(devices, t))
    for device in devices:  # a clean stop at the end: last batch, then "offline"
        device.stop()
        device.say_offline()
        device.pump(sink)
    return RunResult(
        final=snapshot(devices, end),
        digest=sink.digest,
        messages_by_kind=dict(sink.counts),
        hooks=hooks,
    )


def jsonl_writer(out: IO[str]) -> Callable[[str, Kind, bytes], None]:
    """A sink writer printing one JSON object per message: topic and decoded payload."""

    def write(device_id: str, kind: Kind, payload: bytes) -> None:
        topic = f"fleet/v1/{device_id}/{kind.value}"
        out.write(json.dumps({"topic": topic, "payload": json.loads(payload)}) + "\n")

    return write


def presence_of(payload: bytes, device_id: str) -> PresenceState:
    """The state in a presence payload (helper for tests and displays)."""
    msg = decode(f"fleet/v1/{device_id}/presence", payload)
    return msg.state


__all__ = [
    "FleetSnapshot",
    "MemorySink",
    "RunResult",
    "agent_settings",
    "build_devices",
    "jsonl_writer",
    "run_offline",
    "snapshot",
]
