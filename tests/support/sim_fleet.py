"""A simulated fleet for tick-driven rollout tests, built from the real agent core.

Each :class:`SimDevice` runs the agent's update flow (``agent.core.update_flow``: the
transition table, the target checks) over ``SimulatedSlots``; the bundle's ``simulation``
block decides how an update behaves on it (crash on boot, failing health check, failing
only on some hardware revisions, more faults afterwards), plus a background failure rate
unrelated to the bundle. Everything the devices say goes through the server's real ingest
path (``BatchWriter``: decode, dedupe, apply update reports, alarms), and the engine is
driven by :meth:`SimFleet.run` with a simulated clock: no broker, no sleeps.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from agent.adapters.slots import SimulatedSlots
from agent.core.update_flow import TargetInfo, UpdateEvent, UpdateRecord, apply, check_target
from fleet_server.db.models import Bundle, Device
from fleet_server.rollouts.engine import tick
from fleet_server.services.ingest import BatchWriter, Inbound

E = UpdateEvent
STEP_S = {  # seconds each phase takes on a simulated device
    "downloading": 60,
    "installing": 60,
    "rebooting": 60,
    "trial": 120,
}


@dataclass
class SimDevice:
    """One simulated device's update behaviour and telemetry."""

    device_id: str
    hw_revision: str
    model: str
    rng: random.Random
    version: str = "1.0.0"
    release_counter: int = 0
    online: bool = True
    silent: bool = False
    background_failure: float = 0.005
    fault_rate_per_h: float = 0.02
    slots: SimulatedSlots = field(init=False)
    record: UpdateRecord = field(default_factory=UpdateRecord)
    seq: int = 0
    boot_id: str = "boot-1"
    plan: list[tuple[float, UpdateEvent, dict[str, Any]]] = field(default_factory=list)
    fault_multiplier: float = 1.0
    pending_multiplier: float = 1.0
    """The bundle's fault-rate multiplier, applied once the update commits."""
    installs: int = 0

    def __post_init__(self) -> None:
        self.slots = SimulatedSlots(self.version)

    # -- messages ---------------------------------------------------------------------

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def presence(self, now: float, state: str = "online") -> Inbound:
        msg = p.Presence(
            device_id=self.device_id,
            boot_id=self.boot_id,
            seq=self._next(),
            ts=now,
            state=p.PresenceState(state),
            keepalive_s=60,
        )
        return Inbound(p.topic(self.device_id, p.Kind.PRESENCE), p.encode(msg), now)

    def _report(self, now: float, before: UpdateRecord) -> Inbound:
        r = self.record
        msg = p.UpdateStateChanged(
            device_id=self.device_id,
            boot_id=self.boot_id,
            seq=self._next(),
            ts=now,
            execution_id=r.execution_id,
            version=r.version or "",
            from_state=before.state,
            state=r.state,
            failure_class=r.failure_class,
            reason=r.reason,
            attack=r.attack,
        )
        return Inbound(p.topic(self.device_id, p.Kind.EVENT), p.encode(msg), now)

    # -- behaviour --------------------------------------------------------------------

    def on_install(self, cmd: p.Install, bundle: Bundle, now: float) -> list[Inbound]:
        """Accept an install and schedule how it will go, as the agent would live it."""
        self.installs += 1
        if self.silent:
            return []
        sim = (bundle.manifest or {}).get("simulation") or {}
        target = TargetInfo(
            bundle.version,
            tuple(bundle.hardware_revisions),
            bundle.release_counter,
            bundle.min_agent_version,
            bundle.model,
        )
        before = self.record
        self.record = apply(
            self.record,
            E.START,
            now,
            execution_id=cmd.execution_id,
            target=cmd.target,
            version=cmd.version,
            from_version=self.version,
            release_counter=bundle.release_counter,
        )
        out = [self._report(now, before)]
        refusal = check_target(
            target,
            hardware_revision=self.hw_revision,
            model=self.model,
            highest_release_counter=self.release_counter,
            agent_version="1.0.0",
        )
        t = now
        if refusal is not None:
            self.plan = [
                (
                    t + 5,
                    E.FAIL,
                    {
                        "failure_class": p.FailureClass.SECURITY,
                        "reason": refusal[1],
                        "attack": refusal[0].value,
                    },
                )
            ]
            return out
        if self.rng.random() < self.background_failure:
            klass = self.rng.choice(
                [p.FailureClass.DOWNLOAD, p.FailureClass.INSTALL, p.FailureClass.HEALTH]
            )
            if klass is p.FailureClass.HEALTH:
                self._schedule_through_trial(t, E.ROLLBACK, klass, "flaky sensor")
            else:
                self.plan = [(t + 30, E.FAIL, {"failure_class": klass, "reason": "network"})]
            return out
        broken = self.hw_revision in (sim.get("fail_on_hardware") or []) and (
            self.rng.random() < float(sim.get("fail_share", 1.0))
        )
        if sim.get("boot") == "crash" or broken:
            self._schedule_through_trial(t, E.ROLLBACK, p.FailureClass.BOOT, "crash on boot")
        elif sim.get("health") == "fail":
            self._schedule_through_trial(t, E.ROLLBACK, p.FailureClass.HEALTH, "health check")
        else:
            self._schedule_through_trial(t, E.HEALTHY, None, "")
        self.pending_multiplier = float(sim.get("fault_rate_multiplier", 1.0))
        return out

    def _schedule_through_trial(
        self, t: float, last: UpdateEvent, klass: p.FailureClass | None, reason: str
    ) -> None:
        steps = [
            (E.DOWNLOADED, STEP_S["downloading"]),
            (E.INSTALL, 1),
            (E.INSTALLED, STEP_S["installing"]),
            (E.REBOOT, 1),
            (E.BOOTED, STEP_S["rebooting"]),
        ]
        plan: list[tuple[float, UpdateEvent, dict[str, Any]]] = []
        for event, dt in steps:
            t += dt
            plan.append((t, event, {}))
        t += STEP_S["trial"]
        changes = {"failure_class": klass, "reason": reason} if klass else {}
        plan.append((t, last, changes))
        self.plan = plan

    def step(self, now: float, dt: float) -> list[Inbound]:
        """Advance to ``now``: due update steps, and faults at the device's rate."""
        out: list[Inbound] = []
        if not self.online:
            return out
        while self.plan and self.plan[0][0] <= now:
            at, event, changes = self.plan.pop(0)
            before = self.record
            self.record = apply(self.record, event, at, **changes)
            if event is E.INSTALLED:
                self.slots.install(None, self.record.version or "")
            elif event is E.REBOOT:
                self.slots.switch_for_trial()
            elif event is E.HEALTHY:
                self.slots.commit()
                self.version = self.record.version or self.version
                self.release_counter = max(self.release_counter, self.record.release_counter or 0)
                self.fault_multiplier = self.pending_multiplier
            elif event is E.ROLLBACK:
                self.slots.rollback()
            out.append(self._report(at, before))
        if self.rng.random() < self.fault_rate_per_h * self.fault_multiplier * dt / 3600:
            code = "sim_fault"
            raised = p.FaultRaised(
                device_id=self.device_id,
                boot_id=self.boot_id,
                seq=self._next(),
                ts=now,
                code=code,
                severity=p.Severity.MINOR,
            )
            cleared = p.FaultCleared(
                device_id=self.device_id, boot_id=self.boot_id, seq=self._next(), ts=now, code=code
            )
            topic = p.topic(self.device_id, p.Kind.EVENT)
            out += [Inbound(topic, p.encode(raised), now), Inbound(topic, p.encode(cleared), now)]
        return out

    @property
    def running_version(self) -> str | None:
        """The version of the slot the device runs."""
        return self.slots.status().running_version


class RoutingPublisher:
    """The server's command publisher, delivering straight to simulated devices."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.sent: list[p.Command] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        command = p.decode(topic, payload)
        self.sent.append(command)
        self.fleet.deliver(command)


@dataclass
class SimFleet:
    """Simulated devices, the server's ingest and the rollout engine on one clock."""

    sessions: sessionmaker[Session]
    devices: dict[str, SimDevice]
    now: float = 1_790_000_000.0
    writer: BatchWriter = field(init=False)
    publisher: RoutingPublisher = field(init=False)
    inbox: list[Inbound] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.writer = BatchWriter(self.sessions, auto_register=False)
        self.publisher = RoutingPublisher(self)

    def deliver(self, command: p.Command) -> None:
        device = self.devices[command.device_id]
        if isinstance(command, p.Install) and device.online:
            with self.sessions() as session:
                bundle = session.execute(
                    select(Bundle).where(Bundle.name == command.target)
                ).scalar_one()
                session.expunge(bundle)
            self.inbox += device.on_install(command, bundle, self.now)

    def _flush(self) -> None:
        """Hand what the devices said to the server's ingest."""
        if self.inbox:
            batch, self.inbox = self.inbox, []
            self.writer.write(batch)

    def announce(self) -> None:
        """Every online device publishes its presence (as the agent does on connect)."""
        self.writer.write([d.presence(self.now) for d in self.devices.values() if d.online])

    def run(self, until: Callable[[], bool], *, max_s: float, dt: float = 60.0) -> bool:
        """Advance time by ``dt`` steps, ticking the engine, until ``until()`` or ``max_s``."""
        end = self.now + max_s
        while self.now < end:
            self.now += dt
            for device in self.devices.values():
                self.inbox += device.step(self.now, dt)
            self._flush()
            with self.sessions() as session:
                self.decisions += tick(session, self.publisher, now=self.now)
            self._flush()
            if until():
                return True
        return False


def register_fleet(
    sessions: sessionmaker[Session],
    count: int,
    *,
    revisions: dict[str, float],
    seed: int = 7,
    model: str = "edge-1",
    now: float = 1_790_000_000.0,
    first: int = 0,
) -> dict[str, SimDevice]:
    """Register ``count`` devices numbered from ``first`` (revisions by share, 6 batches)
    and make their sims."""
    rng = random.Random(seed + first)
    names = list(revisions)
    weights = [revisions[n] for n in names]
    devices: dict[str, SimDevice] = {}
    with sessions() as session:
        for i in range(first, first + count):
            device_id = f"sim-{i:05d}"
            revision = rng.choices(names, weights)[0]
            session.add(
                Device(
                    device_id=device_id,
                    model=model,
                    hw_revision=revision,
                    batch=f"lot-{i % 6}",
                    region="eu",
                    timezone="Europe/Berlin",
                    channel="production",
                    tags=[],
                    status="active",
                    created_at=now,
                    presence="unknown",
                    dropped_total=0,
                    open_faults=0,
                    software_version="1.0.0",
                )
            )
            digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
            devices[device_id] = SimDevice(
                device_id, revision, model, random.Random(int.from_bytes(digest[:8], "big"))
            )
        session.commit()
    return devices


def add_bundle(
    sessions: sessionmaker[Session],
    version: str,
    *,
    revisions: list[str],
    simulation: dict[str, Any] | None = None,
    release_counter: int = 1,
    model: str = "edge-1",
    preprod_done: bool = True,
    now: float = 1_790_000_000.0,
) -> str:
    """A catalogue row for a bundle (the TUF side is not needed by simulated devices)."""
    name = f"edgefleet-{model}-{version}-r{release_counter}.tar.gz"
    with sessions() as session:
        session.add(
            Bundle(
                name=name,
                product="edgefleet",
                model=model,
                version=version,
                hardware_revisions=revisions,
                release_counter=release_counter,
                channel="production",
                min_agent_version="0.1.0",
                sha256="0" * 64,
                size=1,
                manifest={"simulation": simulation or {}},
                published_at=now,
                published_by="test",
                preprod_completed_at=now if preprod_done else None,
            )
        )
        session.commit()
    return name
