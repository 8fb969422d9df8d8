"""The attack table against the real agent: a running ``AgentDaemon`` with ``DirectorySlots``
is asked over a real Mosquitto to install from a repository the test corrupts.

In every refused case the inactive slot is untouched, the running version keeps running,
and the agent reports ``UpdateStateChanged(state=failed, failure_class=security,
attack=<kind>)``, which a real MQTT subscriber (standing in for the server's ingest)
receives. A valid root rotation is accepted and the update commits.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_bundles.examples import build_examples
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import utc_now
from protocol import Boot, FailureClass, UpdateState
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import Receiver, RunningAgent, agent_config
from tests.support import tuf_attacks as attack
from tests.support.flaky_mirror import MirrorControl, flaky_mirror
from tests.support.tuf_world import World, make_world
from tests.support.update_device import (
    INITIAL_VERSION,
    Operator,
    ack,
    committed_version,
    events,
    outcome,
    provision_root,
    running_version,
    slots_on_disk,
    updates_table,
)

pytestmark = pytest.mark.mosquitto


class Bench:
    """Repository + mirror + broker + subscriber + operator + one device."""

    def __init__(
        self, tmp: Path, world: World, base: str, control: MirrorControl, broker: MosquittoBroker
    ) -> None:
        self.tmp = tmp
        self.world = world
        self.base = base
        self.control = control
        self.broker = broker
        self.slots_dir = tmp / "device" / "slots"
        self.root_path = provision_root(world, tmp / "device" / "root.json")
        self.receiver = Receiver(broker.host, broker.port)
        wait_for(self.receiver.subscribed.is_set, timeout=10)
        self.operator = Operator(broker.host, broker.port)
        self.agent: RunningAgent | None = None

    def start(self, **updates: Any) -> RunningAgent:
        table = updates_table(self.base, self.root_path, self.slots_dir, **updates)
        config = agent_config(self.broker.url, self.tmp / "device" / "state", updates=table)
        self.agent = RunningAgent(config)
        assert self.agent.daemon.updater is not None
        boot_id = self.agent.daemon.boot_id
        # the Boot event follows the command subscription on the same connection
        wait_for(lambda: [b for b in self.receiver.of(Boot) if b.boot_id == boot_id], timeout=15)
        return self.agent

    def install(self, example: str, execution_id: str) -> Any:
        command_id = self.operator.install(self.world, example, execution_id)
        ack(self.receiver, command_id, "accepted")
        done = outcome(self.receiver, execution_id)
        final = ack(self.receiver, command_id, "final")
        assert final.result["state"] == done.state.value
        return done

    def target_requests(self) -> list[str]:
        return [path for path, _ in self.control.requests if "/targets/" in path]

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.operator.close()
        self.receiver.close()


@pytest.fixture
def bench(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Bench]:
    world = make_world(tmp_path / "world")
    world.repo.publish(world.bundles["good-1.1.0"].path, "production")
    with flaky_mirror(world.repo_dir) as (base, control):
        b = Bench(tmp_path, world, base, control, mosquitto)
        try:
            yield b
        finally:
            b.close()


def _name(world: World, example: str) -> str:
    return world.bundles[example].manifest.bundle_filename()


def assert_refused(bench: Bench, execution_id: str, example: str, kind: str) -> None:
    """Install ``example``: refused as ``kind``, slots untouched, old version running."""
    before = slots_on_disk(bench.slots_dir)
    done = bench.install(example, execution_id)
    assert done.state is UpdateState.FAILED, done
    assert done.failure_class is FailureClass.SECURITY
    assert done.attack == kind, done.reason
    assert slots_on_disk(bench.slots_dir) == before, "the inactive slot was written"
    assert running_version(bench.slots_dir) == INITIAL_VERSION
    assert committed_version(bench.slots_dir) == INITIAL_VERSION
    states = [e.state for e in events(bench.receiver, execution_id)]
    assert states == [UpdateState.DOWNLOADING, UpdateState.FAILED]
    agent = bench.agent
    assert agent is not None
    assert agent.daemon.updater is not None
    assert agent.daemon.updater.wait_idle(10)
    assert agent.thread.is_alive(), "the agent keeps running"


def test_tampered_target_bytes(bench: Bench) -> None:
    attack.tamper_target(bench.world.repo_dir, _name(bench.world, "good-1.1.0"))
    bench.start()
    assert_refused(bench, "exec-tamper", "good-1.1.0", "tampered_target")
    assert not list((bench.tmp / "device" / "state" / "downloads").rglob("*.tar.gz"))


def test_metadata_rollback(bench: Bench) -> None:
    old = attack.capture(bench.world.repo_dir)
    bench.world.repo.publish(bench.world.bundles["good-1.2.0"].path)
    bench.start()
    check = bench.operator.check()
    result = ack(bench.receiver, check, "completed").result
    assert result["latest"]["version"] == "1.2.0"  # the device now trusts the newer metadata
    attack.replay_metadata(bench.world.repo_dir, old, ["timestamp.json"])
    assert_refused(bench, "exec-rollback", "good-1.1.0", "metadata_rollback")


def test_freeze_expired_timestamp_by_injected_clock(bench: Bench) -> None:
    agent = bench.start()
    assert agent.daemon.updater is not None
    # the device's clock moved three days on; the mirror still serves what it had
    agent.daemon.updater.tuf_time = lambda: utc_now() + timedelta(days=3)
    assert_refused(bench, "exec-freeze", "good-1.1.0", "freeze")


def test_mix_and_match_of_snapshot_and_targets(bench: Bench) -> None:
    old = attack.capture(bench.world.repo_dir)
    bench.world.repo.publish(bench.world.bundles["good-1.2.0"].path)
    attack.mix_and_match(bench.world.repo_dir, old, "targets")
    bench.start()
    assert_refused(bench, "exec-mix", "good-1.1.0", "mix_and_match")


def test_endless_data_target_larger_than_declared(bench: Bench) -> None:
    attack.endless_target(bench.world.repo_dir, _name(bench.world, "good-1.1.0"))
    bench.start()
    assert_refused(bench, "exec-endless", "good-1.1.0", "endless_data")


def test_wrong_hardware_refused_before_download(bench: Bench) -> None:
    bench.world.bundles.update(build_examples(bench.tmp / "more", ("wrong-hardware",)))
    bench.world.repo.publish(bench.world.bundles["wrong-hardware"].path)
    bench.start()
    assert_refused(bench, "exec-hw", "wrong-hardware", "wrong_hardware")
    assert bench.target_requests() == [], "nothing was downloaded"


def test_downgrade_refused_after_a_newer_release_committed(bench: Bench) -> None:
    bench.world.repo.publish(bench.world.bundles["good-1.2.0"].path)
    bench.start()
    done = bench.install("good-1.2.0", "exec-up")
    assert done.state is UpdateState.COMMITTED, done.reason
    assert running_version(bench.slots_dir) == "1.2.0"
    assert committed_version(bench.slots_dir) == "1.2.0"
    agent = bench.agent
    assert agent is not None
    assert agent.daemon.updater is not None
    agent.daemon.updater.wait_idle(10)
    before = slots_on_disk(bench.slots_dir)
    down = bench.install("good-1.1.0", "exec-down")
    assert down.state is UpdateState.FAILED
    assert down.failure_class is FailureClass.SECURITY
    assert down.attack == "downgrade"
    assert slots_on_disk(bench.slots_dir) == before
    assert running_version(bench.slots_dir) == "1.2.0"


def test_signature_threshold_not_met(bench: Bench) -> None:
    bench.start()
    check = bench.operator.check()
    ack(bench.receiver, check, "completed")
    attack.forge_root(bench.world.repo_dir, bench.world.root_signers(1))  # 1 of 2 keys
    assert_refused(bench, "exec-forged", "good-1.1.0", "threshold_not_met")


def test_valid_root_rotation_is_accepted(bench: Bench) -> None:
    bench.start()
    check = bench.operator.check()
    ack(bench.receiver, check, "completed")
    new_keys = create_root_keys(bench.tmp / "new-root", count=2, threshold=2)
    signers = bench.world.root_signers(2) + list(new_keys.signers.values())
    bench.world.repo.rotate_root([s.public_key for s in new_keys.signers.values()], 2, signers)
    bench.world.repo.rotate_online_key("timestamp", list(new_keys.signers.values()))
    bench.world.repo.publish(bench.world.bundles["good-1.2.0"].path)
    done = bench.install("good-1.2.0", "exec-rotated")
    assert done.state is UpdateState.COMMITTED, done.reason
    assert running_version(bench.slots_dir) == "1.2.0"
    assert committed_version(bench.slots_dir) == "1.2.0"
    states = [e.state.value for e in events(bench.receiver, "exec-rotated")]
    assert states == [
        "downloading",
        "verified",
        "installing",
        "installed",
        "rebooting",
        "trial",
        "committed",
    ]
