"""Simulated devices take updates through the agent's update flow over SimulatedSlots."""

from __future__ import annotations

from typing import Any

import pytest

import protocol as p
from agent.core.update_flow import TRANSITIONS, TargetInfo
from simulator.device import SimDevice
from simulator.engine import build_devices
from simulator.fleet_builder import build_fleet
from simulator.scenario import parse_scenario
from simulator.update_backends import DeviceUpdates, StaticTargets, TargetDetails, UpdateTiming


class Sink:
    """A link that is always up and acks at once; keeps the decoded messages."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def up(self, device: SimDevice) -> bool:
        return True

    def window(self, device: SimDevice) -> int:
        return 100

    def deliver(
        self, device: SimDevice, kind: p.Kind, payload: bytes, retain: bool, seq: int | None
    ) -> bool:
        self.messages.append(p.decode(p.topic(device.device_id, kind), payload))
        if seq is not None:
            device.acked([seq])
        return True


def device() -> SimDevice:
    scenario = parse_scenario(
        {
            "scenario": {"name": "u", "seed": 3, "duration": "2h", "tick": "10s"},
            "fleet": {
                "devices": 1,
                "id_prefix": "u",
                "models": [
                    {"name": "gw-100", "share": 1.0, "revisions": [{"name": "rev-a", "share": 1}]}
                ],
                "batches": [{"name": "b", "share": 1.0}],
                "regions": [{"name": "eu", "share": 1.0, "timezone": "Europe/Berlin"}],
            },
        }
    )
    return build_devices(scenario, fleet=build_fleet(scenario))[0]


TARGETS = {
    "good.tar.gz": TargetDetails(TargetInfo("1.2.0", ("rev-a", "rev-b"), 2, "0.1.0", "gw-100")),
    "crash.tar.gz": TargetDetails(
        TargetInfo("1.3.1", ("rev-a", "rev-b"), 4, "0.1.0", "gw-100"), {"boot": "crash"}
    ),
    "health.tar.gz": TargetDetails(
        TargetInfo("1.3.0", ("rev-a",), 3, "0.1.0", "gw-100"), {"fail_on_hardware": ["rev-a"]}
    ),
    "revz.tar.gz": TargetDetails(TargetInfo("1.2.1", ("rev-z",), 3, "0.1.0", "gw-100")),
}


def install(target: str) -> tuple[SimDevice, Sink, list[p.UpdateStateChanged], p.CommandAck]:
    dev = device()
    sink = Sink()
    updater = DeviceUpdates(
        StaticTargets(TARGETS), hardware_revision="rev-a", model="gw-100", timing=UpdateTiming()
    )
    updater.attach(dev)
    dev.advance_to(dev.t + 60, sink)
    version = TARGETS[target].info.version
    command = p.Install(
        device_id=dev.device_id,
        boot_id="server",
        seq=1,
        ts=dev.device_time(),
        expires_at=dev.device_time() + 600,
        id="cmd-1",
        target=target,
        version=version,
        execution_id="ex-1",
    )
    dev.on_command(p.encode(command))
    dev.handle_commands(sink)
    dev.advance_to(dev.t + 1800, sink)
    reports = [m for m in sink.messages if isinstance(m, p.UpdateStateChanged)]
    acks = [
        m for m in sink.messages if isinstance(m, p.CommandAck) and m.status.value != "accepted"
    ]
    assert len(acks) == 1, acks
    for r in reports:
        assert r.execution_id == "ex-1"
        if r.from_state is not None and r.from_state is not r.state:
            assert (r.from_state, r.state) in {(a, b) for (a, _), b in TRANSITIONS.items()}
    return dev, sink, reports, acks[0]


def states(reports: list[p.UpdateStateChanged]) -> list[str]:
    return [r.state.value for r in reports]


def test_good_bundle_is_committed_and_runs_after_a_reboot() -> None:
    dev, sink, reports, ack = install("good.tar.gz")
    assert states(reports) == [
        "downloading",
        "verified",
        "installing",
        "installed",
        "rebooting",
        "trial",
        "committed",
    ]
    assert ack.status is p.AckStatus.COMPLETED
    status = dev.slots.status()
    assert status.running_version == "1.2.0"
    assert status.committed_version == "1.2.0"
    boots = [m for m in sink.messages if isinstance(m, p.Boot)]
    assert boots[-1].reason == p.RebootReason.FIRMWARE_UPDATE
    assert boots[-1].software_version == "1.2.0"


@pytest.mark.parametrize(
    ("target", "failure"), [("crash.tar.gz", "boot"), ("health.tar.gz", "health")]
)
def test_crash_or_failed_health_rolls_back_and_quarantines(target: str, failure: str) -> None:
    dev, _sink, reports, ack = install(target)
    assert states(reports)[-1] == "rolled_back"
    assert reports[-1].failure_class is not None
    assert reports[-1].failure_class.value == failure
    assert ack.status is p.AckStatus.FAILED
    assert dev.slots.status().running_version == dev.settings.software_version
    # the failed version is quarantined: a second install is refused at once
    updater = next(e for e in dev.extensions if isinstance(e, DeviceUpdates))
    assert TARGETS[target].info.version in updater.quarantine


def test_wrong_hardware_is_refused_before_anything_is_written() -> None:
    dev, _sink, reports, ack = install("revz.tar.gz")
    assert states(reports) == ["downloading", "failed"]
    last = reports[-1]
    assert last.failure_class is p.FailureClass.SECURITY
    assert last.attack == "wrong_hardware"
    assert ack.status is p.AckStatus.FAILED
    assert dev.slots.status().running_version == dev.settings.software_version
    assert not dev.slots.status().in_trial


def test_power_cut_mid_install_resumes_after_the_boot() -> None:
    dev = device()
    sink = Sink()
    updater = DeviceUpdates(StaticTargets(TARGETS), hardware_revision="rev-a", model="gw-100")
    updater.attach(dev)
    dev.advance_to(dev.t + 60, sink)
    command = p.Install(
        device_id=dev.device_id,
        boot_id="server",
        seq=1,
        ts=dev.device_time(),
        expires_at=dev.device_time() + 600,
        id="cmd-2",
        target="good.tar.gz",
        version="1.2.0",
        execution_id="ex-2",
    )
    dev.on_command(p.encode(command))
    dev.handle_commands(sink)
    dev.advance_to(dev.t + 90, sink)  # downloaded, installing
    assert updater.record.state is p.UpdateState.INSTALLING
    dev.reboot(p.RebootReason.POWER_LOSS)
    dev.advance_to(dev.t + 1800, sink)
    reports = [m for m in sink.messages if isinstance(m, p.UpdateStateChanged)]
    assert reports[-1].state is p.UpdateState.COMMITTED
    assert dev.slots.status().committed_version == "1.2.0"
