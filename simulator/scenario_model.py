"""The scenario model: the frozen dataclasses a validated scenario is made of.

A :class:`Scenario` (settings, :class:`Fleet` composition of models, revisions, batches and
regions, timed :class:`Event` s with their :class:`Selector`) is what
:func:`simulator.scenario.parse_scenario` returns; a :class:`DeviceSpec` is one device of
the fleet :func:`simulator.fleet_builder.build_fleet` draws from it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from simulator.hardware import SimulatedHardware
from simulator.hardware_faults import FaultInjection
from simulator.hardware_params import (
    AmbientProfile,
    Environment,
    HardwareParams,
    LoadProfile,
    device_rng,
)

CHANNELS = ("production", "pre-production")
EVENT_KINDS = ("inject", "partition", "broker_outage", "power_cut", "publish", "rollout")


@dataclass(frozen=True, slots=True)
class Dist:
    """A uniform range ``low..high`` or a Weibull(``shape``, ``scale``) distribution."""

    kind: Literal["uniform", "weibull"]
    a: float
    b: float

    def draw(self, rng: np.random.Generator) -> float:
        """One draw."""
        if self.kind == "uniform":
            return float(self.a + (self.b - self.a) * rng.random())
        return float(self.b * rng.weibull(self.a))


@dataclass(frozen=True, slots=True)
class LatentDefect:
    """A batch's latent defect: probability a device has it, onset and severity laws."""

    fault: str
    probability: float
    onset: Dist
    severity: Dist


@dataclass(frozen=True, slots=True)
class Revision:
    """A hardware revision of a model and its hardware constants."""

    name: str
    share: float
    hardware: HardwareParams


@dataclass(frozen=True, slots=True)
class Model:
    """A product model: share of the fleet, serial prefix, load profile, revisions."""

    name: str
    share: float
    serial_prefix: str
    load: LoadProfile
    revisions: tuple[Revision, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """A manufacturing batch: share, production date, latent defects."""

    name: str
    share: float
    production_date: dt.date
    latent_defects: tuple[LatentDefect, ...] = ()


@dataclass(frozen=True, slots=True)
class Region:
    """Where devices run: share, IANA time zone, ambient temperature."""

    name: str
    share: float
    timezone: str
    ambient: AmbientProfile


@dataclass(frozen=True, slots=True)
class Selector:
    """Which devices an event applies to; empty means every device.

    All given criteria must hold; ``share`` then keeps that fraction of the matches,
    chosen deterministically from the seed and each device id.
    """

    devices: tuple[str, ...] = ()
    model: str | None = None
    revision: str | None = None
    batch: str | None = None
    region: str | None = None
    share: float = 1.0


@dataclass(frozen=True, slots=True)
class Event:
    """A timed event. ``kind`` is one of :data:`EVENT_KINDS`.

    ``inject`` uses ``fault``/``severity``; ``partition`` and ``power_cut`` use
    ``duration`` and ``select``; ``broker_outage`` uses ``duration``; ``publish`` and
    ``rollout`` carry ``params`` opaquely for the simulator to interpret.
    """

    index: int
    kind: str
    at: float
    select: Selector = Selector()
    duration: float = 0.0
    fault: str | None = None
    severity: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Optional server or broker the simulated devices talk to."""

    url: str | None = None
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Fleet:
    """Fleet composition."""

    devices: int
    id_prefix: str
    channel: str
    models: tuple[Model, ...]
    batches: tuple[Batch, ...]
    regions: tuple[Region, ...]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario. ``speed`` is a real-time factor, or None for "as fast as possible"."""

    name: str
    seed: int
    start: float
    duration_s: float
    speed: float | None
    tick_s: float
    sample_interval_s: float
    fleet: Fleet
    events: tuple[Event, ...] = ()
    server: Endpoint | None = None
    broker: Endpoint | None = None
    description: str = ""
    agent: dict[str, Any] = field(default_factory=dict)
    """The simulated agents' settings (``[agent]``), validated by
    :func:`simulator.scenario_sections.read_agent`."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Everything needed to instantiate one simulated device."""

    device_id: str
    serial: str
    model: str
    hardware_revision: str
    batch: str
    production_date: dt.date
    region: str
    timezone: str
    utc_offset_s: float
    channel: str
    hardware: HardwareParams
    load: LoadProfile
    ambient: AmbientProfile
    latent_faults: tuple[FaultInjection, ...]
    seed: int

    def make_hardware(self, start_time: float) -> SimulatedHardware:
        """The device's simulated hardware, seeded, with its latent defects injected."""
        hw = SimulatedHardware(
            self.hardware,
            self.load,
            device_rng(self.seed, self.device_id, "hardware"),
            start_time=start_time,
        )
        # start thermally settled at idle in the region's ambient temperature
        hw.state.temp_c = self.ambient.at(start_time, self.utc_offset_s) + (
            self.hardware.p_idle_w * self.hardware.thermal_resistance(self.hardware.fan_nominal_rpm)
        )
        for inj in self.latent_faults:
            hw.inject(inj.fault, inj.severity, inj.at)
        return hw

    def environment(
        self, t: float, *, ntp_reachable: bool = True, powered: bool = True
    ) -> Environment:
        """The device's surroundings at unix time ``t`` (its region's ambient temperature)."""
        return Environment(
            ambient_c=self.ambient.at(t, self.utc_offset_s),
            ntp_reachable=ntp_reachable,
            powered=powered,
            utc_offset_s=self.utc_offset_s,
        )

    def factory_row(self) -> dict[str, str]:
        """The device's row in the factory CSV."""
        return {
            "serial": self.serial,
            "device_id": self.device_id,
            "model": self.model,
            "hardware_revision": self.hardware_revision,
            "batch": self.batch,
            "production_date": self.production_date.isoformat(),
            "region": self.region,
            "timezone": self.timezone,
            "channel": self.channel,
        }
