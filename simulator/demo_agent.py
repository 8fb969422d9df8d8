"""The demo's one real device: a ``fleet-agent run`` process beside the simulated fleet.

It runs this machine's real collectors, keeps its A/B slots (``DirectorySlots``) and its
state in the demo's temporary directory, trusts the demo server's TUF root, and connects
to the demo server's embedded broker with the agent's defaults (``mqtt_version = "auto"``:
it offers MQTT 5, the embedded broker speaks only 3.1.1, so it falls back). It is
registered through the API like any factory device, with the fleet's model and a
hardware revision, so the rollouts target it like the others.

The bundles' declared outcomes are honoured (``simulate_outcomes``): the bad example
bundle only *says* it crashes on boot, and this agent acts it out in-process (restart
``none``) instead of crashing for real. Its reboot command is ``false``: nothing the
demo does may reboot the machine it runs on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from simulator.demo_server import held_interrupts, start_process

DEVICE_ID = "gw-real-01"
INITIAL_VERSION = "1.0.0"


def agent_config(
    workdir: Path, *, broker: str, server_url: str, hardware_revision: str, model: str
) -> str:
    """The real agent's TOML: only what the demo must set; MQTT settings are defaults."""
    top: dict[str, Any] = {
        "device_id": DEVICE_ID,
        "broker": broker,
        "state_dir": str(workdir / "state"),
        "sample_interval_s": 2,
        "publish_interval_s": 4,
        "software_version": INITIAL_VERSION,
        "reboot_command": ["false"],
    }
    updates: dict[str, Any] = {
        "enabled": True,
        "server_url": server_url,
        "root_path": str(workdir / "root.json"),
        "slots": "directory",
        "slots_dir": str(workdir / "slots"),
        "hardware_revision": hardware_revision,
        "model": model,
        "restart": "none",
        "simulate_outcomes": True,
        "payload_mount": "/opt/demo",
        "initial_version": INITIAL_VERSION,
        "health_timeout_s": 30,
    }
    lines = ["# fleet-agent configuration written by fleet-sim demo"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    lines.append("\n[updates]")
    lines += [f"{key} = {json.dumps(value)}" for key, value in updates.items()]
    return "\n".join(lines) + "\n"


class RealAgent:
    """Starts, watches and stops the one ``fleet-agent run`` process."""

    def __init__(self, workdir: Path, config: str, root: bytes) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "root.json").write_bytes(root)
        self.config_path = workdir / "agent.toml"
        self.config_path.write_text(config)
        self.log_path = workdir / "fleet-agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the agent in its own session (the demo stops it, also on Ctrl-C)."""
        with held_interrupts():
            self.proc = start_process(
                [
                    sys.executable,
                    "-c",
                    "from agent.cli import main; raise SystemExit(main())",
                    "run",
                    "-c",
                    str(self.config_path),
                ],
                self.log_path,
            )

    def exited(self) -> int | None:
        """The exit status if the agent stopped, else ``None``."""
        return None if self.proc is None else self.proc.poll()

    def log(self) -> str:
        """What the agent logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def mqtt_version(self) -> str | None:
        """The MQTT version the agent settled on, from its log (``None`` before)."""
        for line in self.log().splitlines():
            if "speaks MQTT " in line:
                return line.split("speaks MQTT ", 1)[1].split(":", 1)[0]
        return None

    def committed_slot(self) -> tuple[str, str] | None:
        """``(slot directory, version)`` the agent committed, read from its slots on disk."""
        try:
            slot = Path(os.readlink(self.workdir / "slots" / "committed")).name
            version = (self.workdir / "slots" / slot / "VERSION").read_text().strip()
        except OSError:
            return None
        return slot, version

    def stop(self) -> None:
        """SIGTERM (the agent delivers what is queued and says offline), then SIGKILL."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


__all__ = ["DEVICE_ID", "RealAgent", "agent_config"]
