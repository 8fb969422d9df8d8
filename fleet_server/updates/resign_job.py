"""The background job that keeps the TUF timestamp, snapshot and targets from expiring.

``ResignJob.tick(now)`` is a plain function the server's scheduler calls every few
minutes (tests call it directly); ``run`` is an asyncio loop around it for the API
process's lifespan. A failing tick (missing key, full disk) is logged and counted and
never stops the loop: the next tick tries again, long before anything expires.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from fleet_server.updates.tuf_repository import RefreshResult, TufRepository

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 300.0


@dataclass
class ResignJob:
    """Re-signs expiring metadata of ``repo``; remembers what happened for metrics."""

    repo: TufRepository
    interval_s: float = DEFAULT_INTERVAL_S
    failures: int = 0
    last_result: RefreshResult | None = None
    last_error: str | None = None

    def tick(self, now: datetime | None = None) -> RefreshResult | None:
        """Re-sign what is due at ``now``; returns the result, or None if it failed."""
        try:
            result = self.repo.refresh_expiring(now)
        except Exception as exc:  # the loop must survive anything; the error is reported
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("TUF re-signing failed (%d so far): %s", self.failures, self.last_error)
            return None
        self.last_result, self.last_error = result, None
        if result.resigned:
            log.info("TUF re-signed %s", ", ".join(result.resigned))
        if result.root_needs_resigning:
            log.warning(
                "TUF root expires %s: re-sign it with the offline root keys "
                "(fleet-server keys resign-root)",
                result.root_expires,
            )
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Call ``tick`` every ``interval_s`` until ``stop`` is set (in a worker thread,
        so file I/O and signing never block the event loop)."""
        while not stop.is_set():
            await asyncio.to_thread(self.tick)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
            except TimeoutError:
                continue
