"""The device's trial check: how a freshly booted slot proves itself before it is kept.

The bundle's health-check spec (``[health_check]`` in its manifest) names a command run
from the new slot, a systemd unit that must be active and whether the agent must reach
the server, all before a deadline counted from the start of the trial. With
``updates.simulate_outcomes`` (QA benches, demos) the bundle's ``simulation`` block can
also make the new slot crash on boot or fail its health check.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.adapters.slots import DirectorySlots, Slots
from agent.config import UpdatesConfig
from agent.core.update_flow import UpdateRecord
from protocol import FailureClass

log = logging.getLogger("agent.updater")

POLL_S = 0.2


def slot_dir(slots: Slots) -> Path | None:
    """Directory of the running slot (None for slots that keep no files)."""
    if isinstance(slots, DirectorySlots):
        return (slots.root / "current").resolve()
    return None


def resolve_command(command: list[str], running_dir: Path, mount: str | None) -> list[str]:
    """The health-check command with paths under ``payload_mount`` pointing into the
    running slot (so ``/opt/demo/bin/app`` runs the *new* slot's ``bin/app``)."""
    resolved = list(command)
    if mount and resolved and resolved[0].startswith(mount + "/"):
        resolved[0] = str(running_dir / resolved[0][len(mount) + 1 :])
    return resolved


class BundleHealthCheck:
    """The trial check of a real device (:class:`~agent.update_ports.TrialCheck`).

    ``wait(seconds)`` pauses between polls (the update worker's interruptible wait);
    ``server_reachable()`` tells whether the agent is connected.
    """

    def __init__(
        self,
        settings: UpdatesConfig,
        slots: Slots,
        *,
        clock: Callable[[], float],
        wait: Callable[[float], None],
        server_reachable: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.slots = slots
        self.clock = clock
        self.wait = wait
        self.server_reachable = server_reachable

    def _simulation(self, work: dict[str, Any]) -> dict[str, Any]:
        if not self.settings.simulate_outcomes:
            return {}
        return dict(work.get("simulation") or {})

    def boot_crashes(self, work: dict[str, Any]) -> bool:
        """Only a bundle's simulated outcome crashes here (a real crash kills the agent)."""
        return self._simulation(work).get("boot") == "crash"

    def problem(
        self, record: UpdateRecord, work: dict[str, Any]
    ) -> tuple[FailureClass, str] | None:
        """Run the bundle's health check until it passes or its deadline passes."""
        spec = dict(work.get("health") or {})
        timeout = float(spec.get("timeout_s") or 60)
        if self.settings.health_timeout_s is not None:
            timeout = min(timeout, self.settings.health_timeout_s)
        started = record.trial_started_at or self.clock()
        deadline = started + timeout
        if self.clock() > deadline:
            return FailureClass.TIMEOUT, f"health check deadline ({timeout:g}s) passed"
        simulation = self._simulation(work)
        revision = self.settings.hardware_revision
        if simulation.get("health") == "fail":
            return FailureClass.HEALTH, "health check failed (bundle's simulated outcome)"
        if revision in (simulation.get("fail_on_hardware") or []):
            return FailureClass.HEALTH, f"health check failed on {revision} (simulated outcome)"
        command = spec.get("command")
        running = slot_dir(self.slots)
        if command and running is not None:
            failed = self._run_command(list(command), running, deadline)
            if failed is not None:
                return FailureClass.HEALTH, failed
        unit = spec.get("systemd_unit")
        if unit:
            if not Path("/run/systemd/system").is_dir() or shutil.which("systemctl") is None:
                log.warning("health check: no systemd here; unit %s not checked", unit)
            elif not self._poll(lambda: _unit_active(str(unit)), deadline):
                return FailureClass.HEALTH, f"systemd unit {unit} not active before the deadline"
        if spec.get("require_server", True) and not self._poll(self.server_reachable, deadline):
            return FailureClass.HEALTH, "the agent did not reach the server before the deadline"
        return None

    def _run_command(self, command: list[str], running: Path, deadline: float) -> str | None:
        argv = resolve_command(command, running, self.settings.payload_mount)
        try:
            result = subprocess.run(
                argv,
                cwd=running,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - self.clock()),
            )
        except subprocess.TimeoutExpired:
            return f"health command {argv[0]} did not finish in time"
        except OSError as exc:
            return f"health command {argv[0]} cannot run: {exc}"
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-300:]
            return f"health command {argv[0]} exited {result.returncode}: {tail}"
        return None

    def _poll(self, predicate: Callable[[], bool], deadline: float) -> bool:
        while True:
            if predicate():
                return True
            if self.clock() >= deadline:
                return False
            self.wait(min(POLL_S, max(0.0, deadline - self.clock())))


def _unit_active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit], check=False).returncode == 0
