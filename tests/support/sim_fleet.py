"""A simulated fleet for tick-driven rollout tests, built from the real agent runtime.

Each :class:`SimDevice` runs the agent's update driver (:class:`agent.update_driver.UpdateDriver`:
the handler table over the update flow's transition table and target checks) over
``SimulatedSlots``; the bundle's ``simulation`` block decides how an update behaves on it
(crash on boot, failing health check, failing only on some hardware revisions, more faults
afterwards), plus a background failure rate unrelated to the bundle. Everything the devices
say goes through the server's real ingest path (``BatchWriter``: decode, dedupe, apply
update reports, alarms), and the engine is driven by :meth:`SimFleet.run` with a simulated
clock: no broker, no sleeps.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from agent.adapters.slots import SimulatedSlots
from agent.core.outputs import RunCommand
from agent.core.update_flow import TargetInfo, UpdateRecord
from agent.update_driver import UpdateDriver
from agent.update_ports import (
    BundleContents,
    FetchedTarget,
    FetchError,
    MemoryUpdateStore,
    TargetListing,
    UpdatePolicy,
)
from fleet_server.db.models import Bundle, Device
from fleet_server.rollouts.engine import tick
from fleet_server.services.ingest import BatchWriter, Inbound

PHASE_S = {  # seconds each state's work takes on a simulated device
    "downloading": 60,
    "verified": 1,
    "installing": 60,
    "installed": 1,
    "rebooting": 60,
    "trial": 120,
}


@dataclass
class Fate:
    """How the current install goes on this device, drawn when the command arrives."""

    bundle: TargetInfo
    simulation: dict[str, Any]
    download_failure: p.FailureClass | None = None
    trial_failure: tuple[p.FailureClass, str] | None = None


class _FatedBackends:
    """The driver's fetcher, bundle reader and trial check, playing out a :class:`Fate`."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def refresh(self) -> None:
        return None

    def target_info(self, name: str) -> FetchedTarget | None:
        fate = self.device.fate
        return FetchedTarget(name, fate.bundle) if fate is not None else None

    def download(self, target: FetchedTarget) -> Path:
        fate = self.device.fate
        if fate is not None and fate.download_failure is not None:
            raise FetchError(fate.download_failure, "network")
        return Path(target.name)

    def verify(self, target: FetchedTarget, path: Path) -> None:
        return None

    def listing(self) -> TargetListing:
        return TargetListing(0, [])

    def read(self, bundle: Path, staging: Path | None) -> BundleContents:
        fate = self.device.fate
        assert fate is not None
        info = fate.bundle
        return BundleContents(info.version, info.hardware_revisions, None, fate.simulation)

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        return False  # a crash on boot is played as a failed trial (no restart loop here)

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[p.FailureClass, str] | None:
        fate = self.device.fate
        return fate.trial_failure if fate is not None else None


class _ReportingHost:
    """The driver's host: every transition becomes an ``UpdateStateChanged`` for ingest."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    def emit(self, fields: dict[str, Any]) -> None:
        self.device.on_transition(fields)

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        return None  # the engine follows the update reports, not the acks

    def request_restart(self, reboot: bool) -> None:
        raise AssertionError("simulated fleet devices boot new slots in place")

    def crash(self) -> None:
        return None

    def rolled_back(self) -> None:
        return None


@dataclass
class SimDevice:
    """One simulated device's update behaviour and telemetry."""

    device_id: str
    hw_revision: str
    model: str
    rng: random.Random
    version: str = "1.0.0"
    online: bool = True
    silent: bool = False
    background_failure: float = 0.005
    fault_rate_per_h: float = 0.02
    slots: SimulatedSlots = field(init=False)
    driver: UpdateDriver = field(init=False)
    seq: int = 0
    boot_id: str = "boot-1"
    fate: Fate | None = None
    fault_multiplier: float = 1.0
    installs: int = 0
    outbox: list[Inbound] = field(default_factory=list)
    clock: float = 0.0

    def __post_init__(self) -> None:
        self.slots = SimulatedSlots(self.version)
        backends = _FatedBackends(self)
        self.driver = UpdateDriver(
            policy=UpdatePolicy(
                hardware_revision=self.hw_revision,
                agent_version="1.0.0",
                model=self.model,
                download_retries=0,
                phase_delay_s=dict(PHASE_S),
            ),
            store=MemoryUpdateStore(),
            slots=self.slots,
            fetcher=backends,
            bundles=backends,
            trial=backends,
            host=_ReportingHost(self),
            clock=lambda: self.clock,
        )

    @property
    def record(self) -> UpdateRecord:
        """The driver's update record."""
        return self.driver.record

    @property
    def release_counter(self) -> int:
        """The highest committed release counter."""
        return self.driver.highest_release_counter

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

    def on_transition(self, fields: dict[str, Any]) -> None:
        """The driver moved: report it; a commit brings the bundle's fault rate."""
        now = self.clock
        msg = p.UpdateStateChanged(
            device_id=self.device_id, boot_id=self.boot_id, seq=self._next(), ts=now, **fields
        )
        self.outbox.append(Inbound(p.topic(self.device_id, p.Kind.EVENT), p.encode(msg), now))
        if fields["state"] is p.UpdateState.COMMITTED and self.fate is not None:
            self.version = self.record.version or self.version
            self.fault_multiplier = float(self.fate.simulation.get("fault_rate_multiplier", 1.0))

    def _drain(self) -> list[Inbound]:
        out, self.outbox = self.outbox, []
        return out

    # -- behaviour --------------------------------------------------------------------

    def on_install(self, cmd: p.Install, bundle: Bundle, now: float) -> list[Inbound]:
        """Accept an install and draw how it will go; the driver carries it out."""
        self.installs += 1
        if self.silent:
            return []
        sim = dict((bundle.manifest or {}).get("simulation") or {})
        fate = Fate(
            TargetInfo(
                bundle.version,
                tuple(bundle.hardware_revisions),
                bundle.release_counter,
                bundle.min_agent_version,
                bundle.model,
            ),
            sim,
        )
        if self.rng.random() < self.background_failure:
            klass = self.rng.choice(
                [p.FailureClass.DOWNLOAD, p.FailureClass.INSTALL, p.FailureClass.HEALTH]
            )
            if klass is p.FailureClass.HEALTH:
                fate.trial_failure = (klass, "flaky sensor")
            else:
                fate.download_failure = klass
        else:
            broken = self.hw_revision in (sim.get("fail_on_hardware") or []) and (
                self.rng.random() < float(sim.get("fail_share", 1.0))
            )
            if sim.get("boot") == "crash" or broken:
                fate.trial_failure = (p.FailureClass.BOOT, "crash on boot")
            elif sim.get("health") == "fail":
                fate.trial_failure = (p.FailureClass.HEALTH, "health check")
        self.fate = fate
        self.clock = now
        params = {"target": cmd.target, "version": cmd.version, "execution_id": cmd.execution_id}
        self.driver.start(RunCommand("install", cmd.id, params), now)
        return self._drain()

    def step(self, now: float, dt: float) -> list[Inbound]:
        """Advance to ``now``: the driver's due work (each at its due time), and faults at
        the device's rate."""
        if not self.online:
            return []
        driver = self.driver
        while driver.due is not None and driver.due <= now:
            self.clock = driver.due
            driver.step(driver.due)
        out = self._drain()
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
