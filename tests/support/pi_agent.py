"""``python -m tests.support.pi_agent BOARD CONFIG``: the real ``fleet-agent run`` on a
fake Raspberry Pi (:class:`simulator.fake_pi.FakePi` under ``BOARD``).

The agent's config says ``slots = "tryboot"``; the only thing swapped is where the slots
are: instead of ``/dev/mmcblk0p*`` and a mounted ``autoboot.txt``, the byte ranges and
the FAT partition 1 of the board's disk image (no loop devices or vfat on a test
machine). Everything else (config, daemon, updater, TUF client, MQTT) is the shipped
code path. The test plays the board's power and systemd around this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import agent.updater
from agent.adapters.slots import Slots
from agent.adapters.tryboot import TrybootSlots
from agent.cli import main
from agent.config import UpdatesConfig
from simulator.fake_pi import FakePi


def run(board: Path, config: Path) -> int:
    """Run the agent over the board at ``board`` until it exits; its exit code."""
    pi = FakePi(board, flash=False)

    def slots_on_board(settings: UpdatesConfig, state_dir: Path | None = None) -> Slots:
        return TrybootSlots(pi.layout(), arm=pi.arm, initial_version=settings.initial_version)

    agent.updater.make_slots = slots_on_board
    return main(["run", "-c", str(config)])


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), Path(sys.argv[2])))
