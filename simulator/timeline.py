"""A scenario's timed events resolved per device: who is cut off, unpowered or faulted when.

:class:`Timeline` is pure: built once from a :class:`~simulator.scenario_model.Scenario` and its
fleet, it answers "is this device partitioned / powered at time t", "is the broker down",
"which hooks fall in this tick" and "which faults does the scenario inject into this
device", so a runner only has to step the hardware and the agents. All times here are
unix seconds (scenario ``at`` values are offsets from ``scenario.start``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simulator.fleet_builder import select_devices
from simulator.hardware import SimulatedHardware
from simulator.hardware_faults import FaultInjection
from simulator.hardware_params import Environment
from simulator.scenario_model import DeviceSpec, Event, Scenario


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open interval ``[start, end)`` of unix time."""

    start: float
    end: float

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int | float) and self.start <= t < self.end


class Timeline:
    """Per-device view of a scenario's events (deterministic for the scenario's seed)."""

    def __init__(self, scenario: Scenario, fleet: Sequence[DeviceSpec]) -> None:
        self.scenario = scenario
        self.start = scenario.start
        self.end = scenario.start + scenario.duration_s
        self._partitions: dict[str, list[Window]] = {}
        self._power_cuts: dict[str, list[Window]] = {}
        self._faults: dict[str, list[FaultInjection]] = {}
        self._broker_outages: list[Window] = []
        self._hooks: list[Event] = []
        for ev in scenario.events:
            at = self.start + ev.at
            window = Window(at, at + ev.duration)
            if ev.kind == "broker_outage":
                self._broker_outages.append(window)
                continue
            if ev.kind in ("publish", "rollout"):
                self._hooks.append(ev)
                continue
            chosen = select_devices(ev.select, fleet, scenario.seed, salt=str(ev.index))
            for spec in chosen:
                if ev.kind == "partition":
                    self._partitions.setdefault(spec.device_id, []).append(window)
                elif ev.kind == "power_cut":
                    self._power_cuts.setdefault(spec.device_id, []).append(window)
                elif ev.kind == "inject" and ev.fault is not None:
                    self._faults.setdefault(spec.device_id, []).append(
                        FaultInjection(ev.fault, ev.severity, at)
                    )

    def partitioned(self, device_id: str, t: float) -> bool:
        """True while the device's network is cut (no broker, no HTTP, no NTP)."""
        return any(t in w for w in self._partitions.get(device_id, ()))

    def powered(self, device_id: str, t: float) -> bool:
        """False during a power cut of the device."""
        return not any(t in w for w in self._power_cuts.get(device_id, ()))

    def broker_down(self, t: float) -> bool:
        """True during a broker outage (the whole fleet loses MQTT, not NTP or HTTP)."""
        return any(t in w for w in self._broker_outages)

    def injections(self, device_id: str) -> list[FaultInjection]:
        """Faults the scenario's events inject into the device (absolute onsets)."""
        return list(self._faults.get(device_id, ()))

    def hooks_due(self, t0: float, t1: float) -> list[Event]:
        """``publish``/``rollout`` events whose time falls in ``(t0, t1]``, in order."""
        return [ev for ev in self._hooks if t0 < self.start + ev.at <= t1]

    def environment(self, spec: DeviceSpec, t: float) -> Environment:
        """The device's surroundings at ``t``: ambient, power and NTP reachability."""
        return spec.environment(
            t,
            ntp_reachable=not self.partitioned(spec.device_id, t),
            powered=self.powered(spec.device_id, t),
        )

    def make_hardware(self, spec: DeviceSpec) -> SimulatedHardware:
        """The device's hardware at the scenario start with latent and scheduled faults."""
        hw = spec.make_hardware(self.start)
        for inj in self.injections(spec.device_id):
            hw.inject(inj.fault, inj.severity, inj.at)
        return hw
