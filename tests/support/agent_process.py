"""Run ``fleet-agent run`` as a real process and play systemd around it.

``Supervisor`` starts the agent, restarts it when it exits asking for a restart (the
update's "reboot", or a crash), and can SIGKILL it where the updater's test hook
(``FLEET_AGENT_TEST_PAUSE_IN_STATE``) made it stop, so the kill lands in one known update
state without any sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.updater import EXIT_RESTART, EXIT_SIMULATED_CRASH, PAUSE_ENV, UPDATE_FILE
from tests.conftest import wait_for


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, top: dict[str, Any], updates: dict[str, Any]) -> Path:
    """A TOML agent config with ``top`` keys and an ``[updates]`` table."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    lines.append("[updates]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in updates.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fleet_agent() -> str:
    """The ``fleet-agent`` console script of this environment."""
    script = Path(sys.executable).parent / "fleet-agent"
    return str(script) if script.exists() else "fleet-agent"


@dataclass
class Supervisor:
    """Starts, restarts and kills one agent process (the test plays systemd)."""

    config: Path
    state_dir: Path
    log_dir: Path
    starts: list[str] = field(default_factory=list)
    """How each run ended: ``killed:<state>``, ``exit:<code>`` or ``stopped``."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, pause_in: str | None = None) -> subprocess.Popen[bytes]:
        """Start ``fleet-agent run``; with ``pause_in`` the updater blocks in that state."""
        env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
        if pause_in:
            env[PAUSE_ENV] = pause_in
        log = (self.log_dir / f"agent-{len(self.starts)}.log").open("wb")
        self.proc = subprocess.Popen(
            [fleet_agent(), "run", "-c", str(self.config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self.proc

    def record(self) -> dict[str, Any]:
        """The updater's persisted record (empty before the first update)."""
        try:
            return dict(json.loads((self.state_dir / UPDATE_FILE).read_bytes())["record"])
        except (OSError, ValueError, KeyError):
            return {}

    def settled(self) -> bool:
        """The update ended and its outcome was handed to the outbox."""
        record = self.record()
        return record.get("state") in ("committed", "failed", "rolled_back") and bool(
            record.get("reported")
        )

    def paused_in(self) -> str | None:
        """The state this process is paused in by the test hook, if any."""
        assert self.proc is not None
        for marker in self.state_dir.glob("test-paused-*"):
            try:
                if int(marker.read_text()) == self.proc.pid:
                    return marker.name.removeprefix("test-paused-")
            except (OSError, ValueError):
                continue
        return None

    def run_one(
        self,
        pause_in: str | None,
        timeout: float = 60,
        on_start: Callable[[], None] | None = None,
    ) -> str:
        """Start once (then call ``on_start``) and wait until the process pauses (then
        SIGKILL it), exits, or the update settles (then SIGTERM it). Returns how the run
        ended."""
        proc = self.start(pause_in)
        if on_start is not None:
            on_start()

        def ended() -> str | None:
            code = proc.poll()
            if code is not None:
                return f"exit:{code}"
            state = self.paused_in()
            if state is not None:
                return f"paused:{state}"
            if self.settled():
                return "settled"
            return None

        how = str(wait_for(ended, timeout=timeout, interval=0.01))
        if how.startswith("paused:"):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            how = "killed:" + how.removeprefix("paused:")
        elif how == "settled":
            self.stop()
            how = "stopped"
        self.starts.append(how)
        return how

    def stop(self) -> int:
        """SIGTERM and wait (a clean stop exits 0)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL whatever still runs (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def until_settled(
        self,
        pause_in: str | None,
        *,
        every_time: bool,
        on_first_start: Callable[[], None] | None = None,
        max_starts: int = 12,
    ) -> list[str]:
        """Keep (re)starting the agent, killing it in ``pause_in`` once or every time,
        until the update settles. Fails if it takes more than ``max_starts`` runs."""
        killed = False
        while len(self.starts) < max_starts:
            pause = pause_in if (every_time or not killed) else None
            how = self.run_one(pause, on_start=None if self.starts else on_first_start)
            if how.startswith("killed:"):
                killed = True
                continue
            if how == "stopped":
                return self.starts
            code = int(how.removeprefix("exit:"))
            if code not in (EXIT_RESTART, EXIT_SIMULATED_CRASH):
                logs = "\n".join(p.read_text() for p in sorted(self.log_dir.glob("agent-*.log")))
                raise AssertionError(f"agent exited {code}; logs:\n{logs[-4000:]}")
        raise AssertionError(f"update did not settle within {max_starts} starts: {self.starts}")
