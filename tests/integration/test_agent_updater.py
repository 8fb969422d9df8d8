"""The agent's updater end to end over a real Mosquitto: bad bundles roll back by themselves
and are quarantined, a download cut mid-way resumes where it stopped, ``check_update``
reports what is installable, and simulated slots follow the same flow."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.commands import Decision
from agent.update_driver import HANDLERS, UpdateDriver
from agent.updater import PAUSE_ENV, PENDING_FILE, Updater
from firmware_bundles.build import BuiltBundle, build_bundle
from firmware_bundles.examples import example_source
from protocol import Boot, FailureClass, Install, UpdateState
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import Receiver, RunningAgent, agent_config
from tests.support.agent_process import Supervisor, write_config
from tests.support.flaky_mirror import MirrorControl, flaky_mirror
from tests.support.tuf_world import World, make_world
from tests.support.update_device import (
    DEVICE,
    INITIAL_VERSION,
    Operator,
    ack,
    assert_consistent,
    committed_version,
    events,
    outcome,
    provision_root,
    reported_path,
    running_version,
    updates_table,
)

pytestmark = pytest.mark.mosquitto


class Rig:
    """Repository, mirror, broker, subscriber and operator for one device."""

    def __init__(
        self, tmp: Path, world: World, base: str, control: MirrorControl, broker: MosquittoBroker
    ) -> None:
        self.tmp, self.world, self.base, self.control, self.broker = (
            tmp,
            world,
            base,
            control,
            broker,
        )
        self.device = tmp / "device"
        self.slots_dir = self.device / "slots"
        self.state_dir = self.device / "state"
        self.root = provision_root(world, self.device / "root.json")
        self.receiver = Receiver(broker.host, broker.port)
        wait_for(self.receiver.subscribed.is_set, timeout=10)
        self.operator = Operator(broker.host, broker.port)
        self.agent: RunningAgent | None = None

    def table(self, **updates: Any) -> dict[str, Any]:
        return updates_table(self.base, self.root, self.slots_dir, **updates)

    def start(self, **updates: Any) -> RunningAgent:
        config = agent_config(self.broker.url, self.state_dir, updates=self.table(**updates))
        agent = self.agent = RunningAgent(config)
        wait_for(lambda: [b for b in self.receiver.of(Boot) if b.boot_id == agent.daemon.boot_id])
        return agent

    def install(self, example: str, execution_id: str) -> Any:
        command_id = self.operator.install(self.world, example, execution_id)
        ack(self.receiver, command_id, "accepted")
        done = outcome(self.receiver, execution_id)
        ack(self.receiver, command_id, "final")
        return done

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.operator.close()
        self.receiver.close()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Rig]:
    world = make_world(
        tmp_path / "world", examples=("good-1.1.0", "good-1.2.0", "health-fail", "boot-crash")
    )
    for name in world.bundles:
        world.repo.publish(world.bundles[name].path, "production")
    with flaky_mirror(world.repo_dir) as (base, control):
        r = Rig(tmp_path, world, base, control, mosquitto)
        try:
            yield r
        finally:
            r.close()


def failing_command_bundle(out: Path) -> BuiltBundle:
    """A bundle (1.4.0, release 5) whose health-check command exits 3: no simulation."""
    src = out / "src"
    shutil.copytree(example_source("good-1.2.0"), src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(version="1.4.0", release_counter=5, simulation=None)
    manifest.pop("simulation")
    (src / "manifest.json").write_text(json.dumps(manifest))
    (src / "payload" / "bin" / "demo-app").write_text(
        "#!/bin/sh\necho 'demo-app: cannot open /dev/sensor0' >&2\nexit 3\n"
    )
    return build_bundle(src, out)


def assert_rolled_back(rig: Rig, execution_id: str, done: Any, failure: FailureClass) -> None:
    assert done.state is UpdateState.ROLLED_BACK, done
    assert done.failure_class is failure
    assert done.reason
    assert running_version(rig.slots_dir) == INITIAL_VERSION
    assert committed_version(rig.slots_dir) == INITIAL_VERSION
    received = events(rig.receiver, execution_id)
    assert_consistent(received)
    assert reported_path(received)[-2:] == ["trial", "rolled_back"]


def test_failing_health_check_rolls_back_and_quarantines(rig: Rig) -> None:
    agent = rig.start(simulate_outcomes=True)
    done = rig.install("health-fail", "exec-health")
    assert_rolled_back(rig, "exec-health", done, FailureClass.HEALTH)
    assert "health check failed" in done.reason
    assert agent.daemon.updater is not None
    assert agent.daemon.updater.quarantine == ["1.3.0"]
    # the same version is never retried on this device
    again = rig.operator.install(rig.world, "health-fail", "exec-health-2")
    rejected = ack(rig.receiver, again, "rejected")
    assert rejected.reason is not None
    assert rejected.reason.value == "not_permitted"
    assert "quarantined" in rejected.detail
    # ... while a good version still installs
    assert rig.install("good-1.2.0", "exec-good").state is UpdateState.COMMITTED


def test_an_install_sent_while_the_last_outcome_winds_down_runs_after_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server counts an execution finished at its terminal event and may send the next
    install at once, while the agent still winds that update down (slots, clean-up, the
    final ack). The install is accepted and runs after it, nothing of the first is lost,
    and the failed version is already refused as quarantined."""
    decided = threading.Event()
    real_decide = Updater.decide_install
    real_finish = HANDLERS[UpdateState.ROLLED_BACK]

    def decide(self: Updater, cmd: Install) -> Decision:
        try:
            return real_decide(self, cmd)
        finally:
            if cmd.execution_id == "exec-next":
                decided.set()

    def finish(driver: UpdateDriver, now: float) -> float | None:
        decided.wait(30)  # the wind-down lasts until the next install was decided
        return real_finish(driver, now)

    monkeypatch.setattr(Updater, "decide_install", decide)
    monkeypatch.setitem(HANDLERS, UpdateState.ROLLED_BACK, finish)
    rig.start(simulate_outcomes=True)
    first = rig.operator.install(rig.world, "health-fail", "exec-fail")
    ack(rig.receiver, first, "accepted")
    assert outcome(rig.receiver, "exec-fail").state is UpdateState.ROLLED_BACK
    retry = rig.operator.install(rig.world, "health-fail", "exec-again")
    again = ack(rig.receiver, retry, "rejected")
    assert again.reason is not None
    assert again.reason.value == "not_permitted", again.detail
    following = rig.operator.install(rig.world, "good-1.2.0", "exec-next")
    ack(rig.receiver, following, "accepted")
    assert ack(rig.receiver, first, "final").status.value == "failed"
    assert outcome(rig.receiver, "exec-next").state is UpdateState.COMMITTED
    ack(rig.receiver, following, "final")
    assert running_version(rig.slots_dir) == "1.2.0"


def test_an_install_waiting_for_a_wind_down_cut_by_a_stop_is_answered_at_the_next_start(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped while an accepted install waits for the last update's wind-down: the install
    never starts over the unsettled update; the next start settles that update (its final
    ack) and answers the install as not started, so the server need not wait for its
    timeout."""
    release = threading.Event()
    real_finish = HANDLERS[UpdateState.ROLLED_BACK]

    def finish(driver: UpdateDriver, now: float) -> float | None:
        release.wait(30)
        return real_finish(driver, now)

    monkeypatch.setitem(HANDLERS, UpdateState.ROLLED_BACK, finish)
    agent = rig.start(simulate_outcomes=True)
    first = rig.operator.install(rig.world, "health-fail", "exec-fail")
    ack(rig.receiver, first, "accepted")
    assert outcome(rig.receiver, "exec-fail").state is UpdateState.ROLLED_BACK
    waiting = rig.operator.install(rig.world, "good-1.2.0", "exec-waiting")
    ack(rig.receiver, waiting, "accepted")
    agent.daemon.request_stop()
    release.set()
    agent.stop()
    assert (rig.state_dir / PENDING_FILE).exists(), "the accepted install is on disk"

    rig.start(simulate_outcomes=True)
    assert ack(rig.receiver, first, "final").status.value == "failed"
    answer = ack(rig.receiver, waiting, "final")
    assert answer.status.value == "failed"
    assert answer.result == {"started": False}
    assert "restarted before it could start" in answer.detail
    assert not events(rig.receiver, "exec-waiting"), "the install never ran"
    wait_for(lambda: not (rig.state_dir / PENDING_FILE).exists(), timeout=10)
    assert running_version(rig.slots_dir) == INITIAL_VERSION


def test_real_health_command_failure_rolls_back(rig: Rig) -> None:
    bad = failing_command_bundle(rig.tmp / "bad")
    rig.world.repo.publish(bad.path, "production")
    rig.world.bundles["failing-command"] = bad
    rig.start()
    done = rig.install("failing-command", "exec-cmd")
    assert_rolled_back(rig, "exec-cmd", done, FailureClass.HEALTH)
    assert "exited 3" in done.reason
    assert "/dev/sensor0" in done.reason


def test_crash_on_boot_rolls_back_after_bounded_restarts(rig: Rig) -> None:
    """A real ``fleet-agent`` process that dies in every trial boot (exit 70)."""
    top = {
        "device_id": DEVICE,
        "broker": rig.broker.url,
        "state_dir": str(rig.state_dir),
        "sample_interval_s": 0.05,
        "publish_interval_s": 0.25,
        "keepalive": 5,
    }
    table = rig.table(restart="exit", simulate_outcomes=True, max_attempts=2)
    logs = rig.device / "logs"
    logs.mkdir(parents=True)
    supervisor = Supervisor(
        write_config(rig.device / "agent.toml", top, table), rig.state_dir, logs
    )

    def send_install() -> None:
        wait_for(lambda: rig.receiver.of(Boot), timeout=30)
        rig.operator.install(rig.world, "boot-crash", "exec-crash")

    try:
        starts = supervisor.until_settled(None, every_time=False, on_first_start=send_install)
    finally:
        supervisor.kill()
    assert starts.count("exit:70") == 3, starts  # crashed in trial until the attempts ran out
    done = outcome(rig.receiver, "exec-crash")
    assert_rolled_back(rig, "exec-crash", done, FailureClass.BOOT)
    assert "while trial" in done.reason
    assert json.loads((rig.state_dir / "update.json").read_text())["quarantine"] == ["1.3.1"]


def test_download_resumes_after_a_network_cut(rig: Rig) -> None:
    name = rig.world.bundles["good-1.2.0"].manifest.bundle_filename()
    size = rig.world.bundles["good-1.2.0"].path.stat().st_size
    rig.control.cut_next_target_after = size // 2
    rig.start()
    done = rig.install("good-1.2.0", "exec-resume")
    assert done.state is UpdateState.COMMITTED, done.reason
    ranges = [r for path, r in rig.control.requests if path.endswith(name)]
    assert ranges == [None, f"bytes={size // 2}-"], "the retry asked only for the rest"
    assert running_version(rig.slots_dir) == "1.2.0"


def test_check_update_lists_installable_targets(rig: Rig) -> None:
    rig.start()
    check = rig.operator.check()
    result = ack(rig.receiver, check, "completed").result
    versions = [t["version"] for t in result["installable"]]
    assert versions == ["1.1.0", "1.2.0", "1.3.0", "1.3.1"]
    assert result["running_version"] == INITIAL_VERSION
    assert result["latest"]["version"] == "1.3.1"
    rig.install("good-1.2.0", "exec-first")
    after = ack(rig.receiver, rig.operator.check(), "completed").result
    # release counters never go down: 1.1.0 (release 1) is no longer offered
    assert [t["version"] for t in after["installable"]] == ["1.2.0", "1.3.0", "1.3.1"]


def test_commands_are_rejected_busy_while_an_update_runs(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PAUSE_ENV, "installed")
    agent = rig.start()
    first = rig.operator.install(rig.world, "good-1.2.0", "exec-long")
    ack(rig.receiver, first, "accepted")
    wait_for(lambda: (rig.state_dir / "test-paused-installed").exists(), timeout=30)
    second = ack(rig.receiver, rig.operator.install(rig.world, "good-1.1.0", "exec-2"), "rejected")
    check = ack(rig.receiver, rig.operator.check(), "rejected")
    for rejected in (second, check):
        assert rejected.reason is not None
        assert rejected.reason.value == "busy"
    assert "installed" in second.detail
    assert agent.daemon.status()["update"]["state"] == "installed"


def test_install_is_rejected_when_updates_are_disabled(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    receiver = Receiver(mosquitto.host, mosquitto.port)
    operator = Operator(mosquitto.host, mosquitto.port)
    wait_for(receiver.subscribed.is_set)
    agent = RunningAgent(agent_config(mosquitto.url, tmp_path / "state"))
    try:
        wait_for(lambda: receiver.of(Boot), timeout=15)
        command_id = operator.send(Install, target="x.tar.gz", version="1.0.0", execution_id="e")
        rejected = ack(receiver, command_id, "rejected")
        assert "not enabled" in rejected.detail
    finally:
        agent.stop()
        operator.close()
        receiver.close()


def test_simulated_slots_follow_the_same_flow(rig: Rig) -> None:
    agent = rig.start(slots="simulated", restart="none")
    assert agent.daemon.updater is not None
    done = rig.install("boot-crash", "exec-sim-crash")
    assert done.state is UpdateState.ROLLED_BACK
    assert done.failure_class is FailureClass.BOOT
    assert rig.install("good-1.2.0", "exec-sim-good").state is UpdateState.COMMITTED
    status = agent.daemon.updater.slots.status()
    assert status.running_version == "1.2.0"
    assert not status.in_trial
    assert not rig.slots_dir.exists(), "simulated slots write nothing"
    assert_consistent(events(rig.receiver, "exec-sim-good"))


def test_install_from_the_fleet_servers_tuf_router_under_uvicorn(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    """The real server side: uvicorn keeps connections alive and answers 404 (with a
    body) for the next root version before every refresh."""
    from fastapi import FastAPI

    from fleet_server.updates.tuf_router import tuf_router
    from tests.support.tuf_serving import asgi_server

    world = make_world(tmp_path / "world")
    world.repo.publish(world.bundles["good-1.2.0"].path, "production")
    app = FastAPI()
    app.include_router(tuf_router(world.repo_dir))
    with asgi_server(app) as server:
        rig = Rig(tmp_path, world, f"{server}/tuf", MirrorControl(world.repo_dir), mosquitto)
        try:
            rig.start()
            done = rig.install("good-1.2.0", "exec-router")
            assert done.state is UpdateState.COMMITTED, done.reason
            assert running_version(rig.slots_dir) == "1.2.0"
        finally:
            rig.close()
