"""A device that takes updates, for the updater's tests: its ``[updates]`` config, an
operator that sends commands over MQTT, and helpers to read the reported update events
and the slots on disk.

The device's initial software is ``1.0.0`` in slot ``a``; the example bundles are
``1.1.0`` (release 1), ``1.2.0`` (release 2) and the bad ones.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import (
    CheckUpdate,
    CommandAck,
    Install,
    UpdateState,
    UpdateStateChanged,
    encode,
    topic,
)
from tests.conftest import wait_for
from tests.integration.agent_harness import Receiver
from tests.support.tuf_world import World

DEVICE = "pi-test-1"
INITIAL_VERSION = "1.0.0"
TERMINAL = {UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK}


def provision_root(world: World, path: Path) -> Path:
    """Write the repository's current root.json where the device keeps its initial trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(world.root)
    return path


def updates_table(base: str, root_path: Path, slots_dir: Path, **overrides: Any) -> dict[str, Any]:
    """An ``[updates]`` table for a DirectorySlots device served from ``base``."""
    table: dict[str, Any] = {
        "enabled": True,
        "metadata_url": f"{base}/metadata/",
        "targets_url": f"{base}/targets/",
        "root_path": str(root_path),
        "slots": "directory",
        "slots_dir": str(slots_dir),
        "hardware_revision": "rev-a",
        "model": "gw-100",
        "restart": "none",
        "payload_mount": "/opt/demo",
        "initial_version": INITIAL_VERSION,
        "health_timeout_s": 20,
        "retry_backoff_s": 0.05,
        "download_retries": 2,
        "max_attempts": 2,
    }
    table.update(overrides)
    return table


class Operator:
    """Sends commands to the device the way the fleet server does (QoS 1)."""

    def __init__(self, host: str, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="test-operator", protocol=mqtt.MQTTv5
        )
        self.client.connect(host, port)
        self.client.loop_start()
        self._n = 0

    def send(self, cls: type, **fields: Any) -> str:
        """Publish one command; returns its id."""
        self._n += 1
        now = time.time()
        command_id = fields.pop("id", f"cmd-{self._n}-{os.getpid()}")
        message = cls(
            device_id=DEVICE,
            boot_id="server",
            seq=self._n,
            ts=now,
            expires_at=now + 600,
            id=command_id,
            **fields,
        )
        self.client.publish(topic(DEVICE, "command"), encode(message), qos=1).wait_for_publish(10)
        return str(command_id)

    def install(self, world: World, example: str, execution_id: str) -> str:
        """Ask the device to install the published example bundle ``example``."""
        manifest = world.bundles[example].manifest
        return self.send(
            Install,
            target=manifest.bundle_filename(),
            version=manifest.version,
            execution_id=execution_id,
        )

    def check(self) -> str:
        """Ask the device to refresh its update metadata."""
        return self.send(CheckUpdate)

    def close(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


def events(receiver: Receiver, execution_id: str) -> list[UpdateStateChanged]:
    """The update events received for one execution, in arrival order, deduplicated on
    ``(boot_id, seq)`` as the server does."""
    seen: set[tuple[str, int]] = set()
    out = []
    for event in receiver.of(UpdateStateChanged):
        if event.execution_id != execution_id or (event.boot_id, event.seq) in seen:
            continue
        seen.add((event.boot_id, event.seq))
        out.append(event)
    return out


def outcome(receiver: Receiver, execution_id: str, timeout: float = 60) -> UpdateStateChanged:
    """Wait for the terminal update event of ``execution_id``."""

    def terminal() -> UpdateStateChanged | None:
        done = [e for e in events(receiver, execution_id) if e.state in TERMINAL]
        return done[-1] if done else None

    found = wait_for(terminal, timeout=timeout)
    assert isinstance(found, UpdateStateChanged)
    return found


def ack(receiver: Receiver, command_id: str, status: str, timeout: float = 30) -> CommandAck:
    """Wait for the command's ack with ``status`` (accepted, rejected, completed, failed;
    ``final`` is completed or failed: sent once the outcome is fully carried out)."""
    wanted = {"completed", "failed"} if status == "final" else {status}

    def find() -> CommandAck | None:
        for a in receiver.of(CommandAck):
            if a.command_id == command_id and a.status.value in wanted:
                return a
        return None

    try:
        found = wait_for(find, timeout=timeout)
    except TimeoutError:
        seen = [(a.command_id, a.status.value, a.detail) for a in receiver.of(CommandAck)]
        raise AssertionError(
            f"no {status} ack for {command_id}; acks: {seen}; rejected: {receiver.rejected}"
        ) from None
    assert isinstance(found, CommandAck)
    return found


def slots_on_disk(slots_dir: Path) -> dict[str, Any]:
    """Every slot file's sha256 plus where ``current`` and ``committed`` point."""
    files = {}
    for slot in ("slot-a", "slot-b"):
        base = slots_dir / slot
        for path in sorted(base.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(slots_dir))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return {
        "files": files,
        "current": os.readlink(slots_dir / "current"),
        "committed": os.readlink(slots_dir / "committed"),
    }


def running_version(slots_dir: Path) -> str:
    """Version in the slot ``current`` points at."""
    return (slots_dir / "current" / "VERSION").read_text().strip()


def committed_version(slots_dir: Path) -> str:
    """Version in the slot ``committed`` points at."""
    return (slots_dir / "committed" / "VERSION").read_text().strip()


def reported_path(received: list[UpdateStateChanged]) -> list[str]:
    """The reported states with repeats collapsed (a state re-reported after a restart)."""
    path: list[str] = []
    for event in received:
        if not path or path[-1] != event.state.value:
            path.append(event.state.value)
    return path


def assert_consistent(received: list[UpdateStateChanged]) -> None:
    """The reports tell one legal walk through the update flow's transition table,
    starting at ``downloading`` and ending in exactly one terminal state."""
    from agent.core.update_flow import TRANSITIONS

    path = reported_path(received)
    assert path, "nothing was reported"
    assert path[0] == "downloading", path
    allowed = {(a.value, b.value) for (a, _event), b in TRANSITIONS.items()}
    for a, b in itertools.pairwise(path):
        assert (a, b) in allowed, f"reported {a} -> {b}, not in the transition table: {path}"
    terminal = [s for s in path if UpdateState(s) in TERMINAL]
    assert terminal == [path[-1]], f"one terminal state, last: {path}"
    for event in received:
        if event.from_state is not None and event.from_state is not event.state:
            assert (event.from_state.value, event.state.value) in allowed, event
