"""The agent's time source, behind a protocol so tests and simulators can substitute it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Time source of the daemon (the simulator and tests may substitute their own)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (scheduling)."""
        ...

    def time(self) -> float:
        """Wall-clock Unix seconds (message timestamps)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (only used while no connection exists)."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """``time.sleep()``."""
        time.sleep(seconds)
