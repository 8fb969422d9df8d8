"""The daemon as the update driver's host: the updater's worker thread hands everything
to the loop thread through queues, so the core and the outbox stay single-threaded."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.core.outputs import Output

if TYPE_CHECKING:
    from agent.daemon import AgentDaemon

log = logging.getLogger("agent")


class UpdateRequests:
    """What the update worker asked the loop for: reports to queue, restarts to do."""

    def __init__(self) -> None:
        self.reports: queue.Queue[tuple[Callable[[float], list[Output]], threading.Event]] = (
            queue.Queue()
        )
        self.restarts: queue.Queue[bool] = queue.Queue()

    def drain_reports(self, wall: float, apply: Callable[[list[Output]], None]) -> None:
        """Queue every waiting report (in the loop's thread) and release its sender."""
        while True:
            try:
                make, done = self.reports.get_nowait()
            except queue.Empty:
                return
            apply(make(wall))
            done.set()

    def drain_restarts(self) -> list[bool]:
        """The restarts asked for (``True``: reboot the device)."""
        asked = []
        while True:
            try:
                asked.append(self.restarts.get_nowait())
            except queue.Empty:
                return asked


class DaemonUpdateHost:
    """The daemon as seen by the updater's worker thread."""

    def __init__(self, daemon: AgentDaemon) -> None:
        self.daemon = daemon

    def _deliver(self, make: Callable[[float], list[Output]]) -> None:
        from agent.updater import Interrupted

        done = threading.Event()
        self.daemon.update_requests.reports.put((make, done))
        while not done.wait(0.5):
            if self.daemon.stopping:
                raise Interrupted("agent stopping before the update report was queued")

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue the event for the loop and wait until it is in the on-disk outbox."""
        core = self.daemon.core
        self._deliver(lambda now: core.update_state(now, **fields))

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        """Acknowledge the command's outcome (also waits until it is in the outbox)."""
        core = self.daemon.core
        self._deliver(
            lambda now: core.command_result(command_id, now, ok=ok, detail=detail, result=result)
        )

    def server_reachable(self) -> bool:
        """Connected to the broker (``online`` presence is sent on every connect)."""
        return self.daemon.connected_since is not None

    def request_restart(self, reboot: bool) -> None:
        """Ask the loop to restart the agent (or the device) to boot the new slot."""
        self.daemon.update_requests.restarts.put(reboot)

    def crash(self) -> None:
        """Die at once, like a crash (no clean stop recorded)."""
        from agent.updater import EXIT_SIMULATED_CRASH

        log.error("exiting abruptly: simulated crash on boot")
        logging.shutdown()
        os._exit(EXIT_SIMULATED_CRASH)

    def rolled_back(self) -> None:
        """Nothing to do: the agent keeps running while the slots point back at the
        known-good one."""
