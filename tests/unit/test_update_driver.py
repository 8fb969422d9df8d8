"""The update driver's handler table, stepped by hand on a fake clock: no threads, no sleeps.

The driver runs over in-memory back-ends (targets, bundle contents, ``SimulatedSlots``,
a memory store); its host records what a daemon would queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.adapters.slots import SimulatedSlots
from agent.core.outputs import RunCommand
from agent.core.update_flow import (
    ACTIVE_STATES,
    RESTART_TABLE,
    TERMINAL_STATES,
    TRANSITIONS,
    RestartAction,
    TargetInfo,
    UpdateRecord,
)
from agent.update_driver import HANDLERS, UpdateDriver
from agent.update_ports import (
    BundleContents,
    FetchedTarget,
    FetchError,
    MemoryUpdateStore,
    TargetListing,
    UpdatePolicy,
)
from protocol import FailureClass, UpdateState

U = UpdateState


class MemoryTargets:
    """Targets and bundles held in memory: the driver's fetcher and bundle reader."""

    def __init__(self, bundles: dict[str, BundleContents], release_counter: int = 2) -> None:
        self.bundles = bundles
        self.release_counter = release_counter
        self.outages = 0
        """How many of the next downloads fail with a transient network error."""
        self.downloads = 0

    def _info(self, name: str) -> TargetInfo:
        contents = self.bundles[name]
        return TargetInfo(
            contents.version, contents.hardware_revisions, self.release_counter, "0", "gw"
        )

    def refresh(self) -> None:
        return None

    def target_info(self, name: str) -> FetchedTarget | None:
        if name not in self.bundles:
            return None
        return FetchedTarget(name, self._info(name), {"length": 1})

    def download(self, target: FetchedTarget) -> Path:
        if self.outages:
            self.outages -= 1
            raise FetchError(FailureClass.DOWNLOAD, "connection reset", transient=True)
        self.downloads += 1
        return Path(target.name)

    def verify(self, target: FetchedTarget, path: Path) -> None:
        if str(path) not in self.bundles:
            raise FileNotFoundError(path)

    def listing(self) -> TargetListing:
        return TargetListing(1, [FetchedTarget(n, self._info(n)) for n in self.bundles])

    def read(self, bundle: Path, staging: Path | None) -> BundleContents:
        return self.bundles[str(bundle)]


class Outcomes:
    """Trial outcomes from the bundle's ``simulation`` block."""

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        return (work.get("simulation") or {}).get("boot") == "crash"

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        if (work.get("simulation") or {}).get("health") == "fail":
            return FailureClass.HEALTH, "health check failed"
        return None


class Host:
    """Records the reports and restart requests a daemon would carry out."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.acks: list[tuple[str, bool, dict[str, Any]]] = []
        self.restarts: list[bool] = []
        self.crashes = 0
        self.rollbacks = 0

    def emit(self, fields: dict[str, Any]) -> None:
        self.events.append(fields)

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        self.acks.append((command_id, ok, result))

    def request_restart(self, reboot: bool) -> None:
        self.restarts.append(reboot)

    def crash(self) -> None:
        self.crashes += 1

    def rolled_back(self) -> None:
        self.rollbacks += 1


BUNDLES = {
    "good": BundleContents("1.2.0", ("rev-a",)),
    "crash": BundleContents("1.3.1", ("rev-a",), simulation={"boot": "crash"}),
    "sick": BundleContents("1.3.0", ("rev-a",), simulation={"health": "fail"}),
}


class Rig:
    """A driver with its back-ends and a hand-moved clock."""

    def __init__(self, *, restart: str = "none", delays: dict[str, float] | None = None) -> None:
        self.now = 1000.0
        self.slots = SimulatedSlots("1.0.0")
        self.store = MemoryUpdateStore()
        self.targets = MemoryTargets(BUNDLES)
        self.host = Host()
        self.policy = UpdatePolicy(
            hardware_revision="rev-a",
            agent_version="1.0.0",
            model="gw",
            download_retries=2,
            retry_backoff_s=5.0,
            restart=restart,
            phase_delay_s=delays or {},
        )
        self.driver = self.boot()

    def boot(self) -> UpdateDriver:
        """A new driver over the same store and slots (an agent start)."""
        self.driver = UpdateDriver(
            policy=self.policy,
            store=self.store,
            slots=self.slots,
            fetcher=self.targets,
            bundles=self.targets,
            trial=Outcomes(),
            host=self.host,
            clock=lambda: self.now,
        )
        return self.driver

    def run(self, wake: float | None) -> None:
        """Step the driver at each wake time it asks for until it has nothing to do."""
        for _ in range(100):
            if wake is None:
                return
            self.now = max(self.now, wake)
            wake = self.driver.step(self.now)
        raise AssertionError("the driver did not settle")

    def install(self, target: str) -> None:
        params = {"target": target, "version": BUNDLES[target].version, "execution_id": "ex-1"}
        self.run(self.driver.start(RunCommand("install", "cmd-1", params), self.now))

    def states(self) -> list[str]:
        return [e["state"].value for e in self.host.events]


def test_every_state_the_flow_can_be_in_has_a_handler() -> None:
    in_table = {state for state, _event in TRANSITIONS} | set(TRANSITIONS.values())
    assert set(HANDLERS) == in_table - {U.IDLE}
    assert set(HANDLERS) == set(ACTIVE_STATES) | set(TERMINAL_STATES)
    # idle has no work: it waits for an install command
    assert U.IDLE not in HANDLERS


@pytest.mark.parametrize("state", list(RESTART_TABLE))
def test_every_restart_table_entry_is_carried_to_an_end(state: UpdateState) -> None:
    """An agent killed in any state finds a handler for what the restart table says and
    ends the update in a terminal state, reported once."""
    rig = Rig()
    record = UpdateRecord(
        state=state,
        execution_id="ex-2",
        target="good",
        version="1.2.0",
        release_counter=2,
        entered_at=rig.now,
    )
    if state in (U.INSTALLED, U.REBOOTING, U.TRIAL):
        rig.slots.install(None, "1.2.0")  # what the persisted state says was done
    if state in (U.REBOOTING, U.TRIAL):
        rig.slots.switch_for_trial()
    driver = rig.boot()
    driver.record = record
    driver.announced = state.value
    driver.work = {"command_id": "cmd-2", "bundle_path": "good", "target_file": {"length": 1}}
    driver.save()
    driver = rig.boot()
    rig.run(driver.resume(rig.now))
    if RESTART_TABLE[state] is RestartAction.NONE:
        assert driver.record.state is U.IDLE
        return
    assert driver.record.state in TERMINAL_STATES
    assert driver.record.reported
    assert [command_id for command_id, _ok, _ in rig.host.acks] == ["cmd-2"]
    if state in ACTIVE_STATES:
        assert driver.record.state is U.COMMITTED, driver.record
        assert rig.slots.status().committed_version == "1.2.0"


def test_a_good_bundle_is_committed_without_threads_or_sleeps() -> None:
    rig = Rig()
    rig.install("good")
    assert rig.states() == [
        "downloading",
        "verified",
        "installing",
        "installed",
        "rebooting",
        "trial",
        "committed",
    ]
    status = rig.slots.status()
    assert (status.running_version, status.committed_version) == ("1.2.0", "1.2.0")
    assert [(command_id, ok) for command_id, ok, _ in rig.host.acks] == [("cmd-1", True)]
    assert rig.driver.highest_release_counter == 2
    assert rig.store.doc is not None
    assert rig.store.doc["record"]["reported"] is True


def test_phase_delays_are_wake_times_not_sleeps() -> None:
    rig = Rig(delays={"downloading": 60.0, "trial": 120.0})
    start = rig.now
    params = {"target": "good", "version": "1.2.0", "execution_id": "ex-1"}
    wake = rig.driver.start(RunCommand("install", "cmd-1", params), rig.now)
    assert wake == start + 60.0
    assert rig.driver.step(start + 59.0) == start + 60.0  # not due yet: nothing happens
    assert rig.states() == ["downloading"]
    assert rig.driver.step(start + 60.0) == start + 180.0  # through to the trial's end
    assert rig.states()[-1] == "trial"
    rig.run(start + 180.0)
    assert rig.states()[-1] == "committed"


def test_a_switch_that_needs_a_restart_waits_for_it() -> None:
    rig = Rig(restart="exit")
    rig.install("good")
    assert rig.states()[-1] == "rebooting"
    assert rig.host.restarts == [False]
    assert rig.driver.due is None
    rig.boot()  # the agent comes back on the new slot
    rig.run(rig.driver.resume(rig.now))
    assert rig.states()[-2:] == ["trial", "committed"]


def test_a_crash_on_boot_rolls_back_through_the_restart_table() -> None:
    rig = Rig()
    rig.install("crash")
    assert rig.states()[-2:] == ["trial", "rolled_back"]
    last = rig.host.events[-1]
    assert last["failure_class"] is FailureClass.BOOT
    assert "giving up" in last["reason"]
    status = rig.slots.status()
    assert (status.running_version, status.in_trial) == ("1.0.0", False)
    assert rig.driver.quarantine == ["1.3.1"]
    assert rig.host.rollbacks == 1
    assert rig.host.acks[-1][1] is False


def test_a_crash_on_boot_asks_a_host_that_can_die_to_die() -> None:
    rig = Rig(restart="exit")
    rig.install("crash")
    rig.boot()
    rig.run(rig.driver.resume(rig.now))
    assert rig.host.crashes == 1  # this host returns, so the driver plays the restarts
    assert rig.states()[-1] == "rolled_back"


def test_a_failed_health_check_rolls_back_and_quarantines() -> None:
    rig = Rig()
    rig.install("sick")
    assert rig.states()[-2:] == ["trial", "rolled_back"]
    assert rig.host.events[-1]["failure_class"] is FailureClass.HEALTH
    assert rig.slots.status().running_version == "1.0.0"
    assert rig.driver.quarantine == ["1.3.0"]
    decision = rig.driver.decide_install(_install_cmd("1.3.0"))
    assert not decision.accepted  # never tried again


def test_transient_download_failures_back_off_then_succeed() -> None:
    rig = Rig()
    rig.targets.outages = 2
    start = rig.now
    params = {"target": "good", "version": "1.2.0", "execution_id": "ex-1"}
    wake = rig.driver.start(RunCommand("install", "cmd-1", params), rig.now)
    assert rig.driver.step(wake or start) == start + 5.0
    assert rig.driver.step(start + 5.0) == start + 15.0  # doubled
    rig.run(start + 15.0)
    assert rig.states()[-1] == "committed"


def test_persistent_download_failures_fail_without_touching_the_slots() -> None:
    rig = Rig()
    rig.targets.outages = 10
    rig.install("good")
    assert rig.states() == ["downloading", "failed"]
    assert rig.host.events[-1]["failure_class"] is FailureClass.DOWNLOAD
    assert "failed 3 times" in rig.host.events[-1]["reason"]
    assert rig.slots.installs == 0


def _install_cmd(version: str) -> Any:
    from protocol import Install

    return Install(
        device_id="d",
        boot_id="b",
        seq=1,
        ts=0.0,
        expires_at=10.0,
        id="cmd-9",
        target="sick",
        version=version,
        execution_id="ex-9",
    )
