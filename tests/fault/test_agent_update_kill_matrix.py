"""The kill matrix: a real ``fleet-agent run`` process with ``DirectorySlots`` is SIGKILLed
in every update state (the test hook makes it stop there after persisting the state) and
restarted, the test playing systemd.

* killed once in a state: the update still ends committed on the new version;
* killed in the same state every time: it ends failed (before the switch) or rolled back
  (after it) on the old version, after a bounded number of starts, instead of looping;
* in both cases the device is never left between versions, and the reports a real
  Mosquitto subscriber received are one legal walk through the transition table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol import Boot, CommandAck, FailureClass, RebootReason
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import Receiver
from tests.support.agent_process import Supervisor, write_config
from tests.support.flaky_mirror import flaky_mirror
from tests.support.tuf_world import World, make_world
from tests.support.update_device import (
    DEVICE,
    INITIAL_VERSION,
    Operator,
    assert_consistent,
    committed_version,
    events,
    provision_root,
    reported_path,
    running_version,
    updates_table,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

MAX_ATTEMPTS = 2
_ids = itertools.count()


@dataclass
class Rig:
    world: World
    base: str
    broker: MosquittoBroker
    receiver: Receiver
    operator: Operator
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    w = make_world(tmp_path_factory.mktemp("world"))
    w.repo.publish(w.bundles["good-1.1.0"].path, "production")
    w.repo.publish(w.bundles["good-1.2.0"].path, "production")
    return w


@pytest.fixture
def rig(world: World, mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[Rig]:
    receiver = Receiver(mosquitto.host, mosquitto.port)
    wait_for(receiver.subscribed.is_set, timeout=10)
    operator = Operator(mosquitto.host, mosquitto.port)
    with flaky_mirror(world.repo_dir) as (base, _control):
        yield Rig(world, base, mosquitto, receiver, operator, tmp_path)
    operator.close()
    receiver.close()


def run_update(rig: Rig, pause_in: str | None, *, every_time: bool) -> tuple[Supervisor, str]:
    """Install good-1.2.0 on a fresh device, killing it in ``pause_in``."""
    device = rig.tmp / "device"
    state_dir = device / "state"
    logs = device / "logs"
    logs.mkdir(parents=True)
    root = provision_root(rig.world, device / "root.json")
    table = updates_table(
        rig.base, root, device / "slots", restart="exit", max_attempts=MAX_ATTEMPTS
    )
    top = {
        "device_id": DEVICE,
        "broker": rig.broker.url,
        "state_dir": str(state_dir),
        "sample_interval_s": 0.05,
        "publish_interval_s": 0.25,
        "keepalive": 5,
    }
    config = write_config(device / "agent.toml", top, table)
    supervisor = Supervisor(config, state_dir, logs)
    execution_id = f"exec-{next(_ids)}"

    def send_install() -> None:
        # the first Boot event follows the agent's command subscription
        wait_for(lambda: rig.receiver.of(Boot), timeout=30)
        rig.operator.install(rig.world, "good-1.2.0", execution_id)

    try:
        supervisor.until_settled(pause_in, every_time=every_time, on_first_start=send_install)
    finally:
        supervisor.kill()
    return supervisor, execution_id


def final_ack(rig: Rig) -> CommandAck:
    def find() -> CommandAck | None:
        done = [a for a in rig.receiver.of(CommandAck) if a.status.value in ("completed", "failed")]
        return done[-1] if done else None

    found = wait_for(find, timeout=30)
    assert isinstance(found, CommandAck)
    return found


def settle_reports(rig: Rig, execution_id: str, last: str) -> list[str]:
    """Wait until the subscriber has the terminal report, then return the walk."""
    wait_for(lambda: reported_path(events(rig.receiver, execution_id))[-1:] == [last], timeout=30)
    received = events(rig.receiver, execution_id)
    assert_consistent(received)
    return reported_path(received)


ALL_STATES = ["downloading", "verified", "installing", "installed", "rebooting", "trial"]


@pytest.mark.parametrize("state", [*ALL_STATES, "committed"])
def test_killed_once_in_a_state_still_commits_the_new_version(rig: Rig, state: str) -> None:
    supervisor, execution_id = run_update(rig, state, every_time=False)
    assert f"killed:{state}" in supervisor.starts
    assert supervisor.record()["state"] == "committed"
    assert running_version(rig.tmp / "device" / "slots") == "1.2.0"
    assert committed_version(rig.tmp / "device" / "slots") == "1.2.0"
    walk = settle_reports(rig, execution_id, "committed")
    assert walk == [*ALL_STATES, "committed"]
    assert final_ack(rig).status.value == "completed"
    boots = rig.receiver.of(Boot)
    assert boots[0].slot == "a"
    assert boots[0].software_version == INITIAL_VERSION
    updated = [b for b in boots if b.reason == RebootReason.FIRMWARE_UPDATE]
    assert updated, "the restart into the new slot is a firmware-update boot"
    assert updated[-1].slot == "b"
    assert updated[-1].software_version == "1.2.0"


@pytest.mark.parametrize(
    ("state", "ends", "failure"),
    [
        ("downloading", "failed", FailureClass.DOWNLOAD),
        ("verified", "failed", FailureClass.VERIFICATION),
        ("installing", "failed", FailureClass.INSTALL),
        ("installed", "failed", FailureClass.INSTALL),
        ("rebooting", "rolled_back", FailureClass.BOOT),
        ("trial", "rolled_back", FailureClass.BOOT),
    ],
)
def test_killed_every_time_in_a_state_gives_up_on_the_old_version(
    rig: Rig, state: str, ends: str, failure: FailureClass
) -> None:
    supervisor, execution_id = run_update(rig, state, every_time=True)
    kills = [s for s in supervisor.starts if s == f"killed:{state}"]
    assert len(kills) == MAX_ATTEMPTS + 1, supervisor.starts
    assert len(supervisor.starts) <= MAX_ATTEMPTS + 4, "bounded, no restart loop"
    record = supervisor.record()
    assert record["state"] == ends
    assert record["failure_class"] == failure.value
    assert f"while {state}" in record["reason"]
    slots = rig.tmp / "device" / "slots"
    assert running_version(slots) == INITIAL_VERSION
    assert committed_version(slots) == INITIAL_VERSION
    walk = settle_reports(rig, execution_id, ends)
    assert walk[-2:] == [state, ends]
    assert final_ack(rig).status.value == "failed"
