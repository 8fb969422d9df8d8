"""Whole-image A/B end to end (issue 20): the real fleet server (its TUF repository served
at ``/tuf/``, ``Install`` over a real Mosquitto, the ingest writing reports to the
database) and the real agent process with ``slots = "tryboot"`` on a fake Raspberry Pi
(``tests/support/pi_agent.py``: the shipped ``fleet-agent run`` with the slots placed on
the board's disk image: MBR, FAT partitions). The test plays the board's power and
systemd: whenever the agent exits (75: it asked for the reboot into the trial), the fake
bootloader boots the card again and the agent is started again.

1. an image bundle commits: the board boots the new slot, ``autoboot.txt`` names it;
2. a tampered image is refused by the TUF check: neither slot, ``autoboot.txt`` nor the
   flag is touched;
3. an image bundle failing its health check rolls back: ``autoboot.txt`` never changes,
   the flag is cleared, the next power-on boots the committed slot.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.adapters.tryboot_io import Autoboot, parse_autoboot
from agent.updater import EXIT_RESTART
from simulator.fake_pi import FakePi, build_image_bundle
from tests.conftest import MosquittoBroker, wait_for
from tests.e2e.test_ota_end_to_end import DEVICE, WALK_OK, Fleet, Systemd, _fleet, states
from tests.support.tuf_attacks import tamper_target
from tests.support.update_device import INITIAL_VERSION

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class PiSystemd(Systemd):
    """:class:`Systemd` for the agent on the board: before each restart the board is
    powered on again (the fake bootloader reads the flag and ``autoboot.txt``)."""

    pi: FakePi | None = None

    def _loop(self) -> None:
        assert self.pi is not None
        while len(self.exits) < self.max_starts:
            with self._lock:
                if self._stopping:
                    return
                if self.exits:
                    self.pi.boot()  # the reboot the agent asked for
                log = (self.log_dir / f"agent-{len(self.exits)}.log").open("wb")
                env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
                argv = [sys.executable, "-m", "tests.support.pi_agent", str(self.pi.root)]
                self.proc = subprocess.Popen(
                    [*argv, str(self.config)],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                log.close()
            self.exits.append(self.proc.wait())


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[Fleet]:
    """Server + ingest + broker on SQLite, the device registered (rev-a), no agent yet."""
    yield from _fleet(f"sqlite:///{tmp_path}/fleet.db", tmp_path, mosquitto, {})


def publish(fleet: Fleet, bundle: Path) -> str:
    """``POST /api/v1/bundles``; the target name."""
    r = httpx.post(
        f"{fleet.live.url}/api/v1/bundles",
        content=bundle.read_bytes(),
        headers={**fleet.hdr(), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["name"])


def start_agent(fleet: Fleet, pi: FakePi) -> PiSystemd:
    device = fleet.tmp / "device"
    (device / "logs").mkdir(parents=True)
    config = fleet.agent_config(slots="tryboot")
    # the reboot command fails here, so the agent exits 75 and "systemd" reboots the board
    config.write_text('reboot_command = ["false"]\n' + config.read_text())
    agent = PiSystemd(config, device / "logs", device / "state", pi=pi)
    fleet.agent = agent  # stopped by the fleet fixture
    try:
        wait_for(lambda: fleet.device()["software_version"] == INITIAL_VERSION, timeout=30)
    except TimeoutError:
        raise AssertionError(f"agent did not come up:\n{agent.logs()[-4000:]}") from None
    return agent


def run_update(fleet: Fleet, agent: PiSystemd, name: str) -> dict[str, object]:
    r = fleet.update(DEVICE, name)
    assert r.status_code == 202, r.text
    try:
        return fleet.finished(r.json()["id"], timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{agent.logs()[-4000:]}") from None


def test_image_updates_through_the_server_on_a_fake_pi(fleet: Fleet) -> None:
    pi = FakePi(fleet.tmp / "pi", version=INITIAL_VERSION)
    out = fleet.tmp / "images"
    good = publish(fleet, build_image_bundle(out, "1.2.0"))
    bad = publish(fleet, build_image_bundle(out, "1.3.0", simulation={"health": "fail"}))
    tampered = publish(fleet, build_image_bundle(out, "1.4.0"))
    agent = start_agent(fleet, pi)

    # 1. commit: the trial boot of slot b becomes the default
    ex = run_update(fleet, agent, good)
    assert ex["status"] == "committed", ex
    assert states(ex) == WALK_OK
    assert EXIT_RESTART in agent.exits, "the agent asked for the reboot into the trial"
    assert pi.booted == 3
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(3, 2)
    assert pi.holds("b", "1.2.0")
    assert pi.holds("a", INITIAL_VERSION)
    wait_for(lambda: fleet.device()["software_version"] == "1.2.0", timeout=15)

    # 2. a tampered image: refused by the TUF check before any write
    before = (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot())
    tamper_target(fleet.repo_dir, tampered, offset=2000)
    ex = run_update(fleet, agent, tampered)
    assert (ex["status"], ex["failure_class"]) == ("failed", "security"), ex
    assert (pi.slot_content("a"), pi.slot_content("b"), pi.read_autoboot()) == before
    assert not pi.flag()

    # 3. a failed health check: rolled back without a FAT write, the flag cleared
    ex = run_update(fleet, agent, bad)
    assert (ex["status"], ex["failure_class"], ex["phase"]) == ("failed", "health", "rolled_back")
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(3, 2)
    assert not pi.flag()
    wait_for(lambda: fleet.device()["software_version"] == "1.2.0", timeout=15)
    agent.stop()
    assert pi.boot() == 3  # the next power-on runs the committed slot again
    assert pi.holds("b", "1.2.0")
