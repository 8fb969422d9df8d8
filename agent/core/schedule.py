"""When to sample, when to publish, and how long to wait before reconnecting.

Plain objects fed with ``now`` (monotonic seconds): the daemon asks them for the next
deadline and sleeps in the transport until then; the simulator drives them with its own
clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


class Periodic:
    """A fixed-rate timer that does not drift and does not burst after a stall.

    After a long stall (suspend, a blocked disk) it skips the missed ticks instead of
    firing them all at once.
    """

    def __init__(self, interval: float, start: float, *, immediately: bool = True) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.next_at = start if immediately else start + interval

    def due(self, now: float) -> bool:
        """True (once per period) when the timer has fired; advances to the next period."""
        if now < self.next_at:
            return False
        self.next_at += self.interval
        if self.next_at <= now:
            self.next_at = now + self.interval
        return True


class Schedule:
    """The agent's sampling and publishing timers."""

    def __init__(self, sample_interval: float, publish_interval: float, start: float) -> None:
        self.sample = Periodic(sample_interval, start)
        self.publish = Periodic(publish_interval, start, immediately=False)

    def next_deadline(self) -> float:
        """The earliest time something is due."""
        return min(self.sample.next_at, self.publish.next_at)


@dataclass
class Backoff:
    """Exponential reconnect backoff with full jitter, reset after a good connection.

    The jitter spreads a fleet that lost its broker at once over the whole window, so
    the broker is not hit by every device in the same second when it comes back.
    """

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt (grows until ``maximum``)."""
        cap = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return self.initial / 2 + self.rng.random() * max(cap - self.initial / 2, 0.0)

    def reset(self) -> None:
        """Call after a successful connection."""
        self._attempt = 0
