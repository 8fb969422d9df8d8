"""Failed-token attempts counted per source and slowed down (issue 13, finding 7).

Pure bookkeeping, no I/O and no sleeping: a sleep would pin one of the threadpool workers
that serve every other request. A source (the peer address) that presents
``limit`` unknown, revoked or expired tokens within ``window_s`` is refused with 429 and
``Retry-After`` for ``block_s``, whatever token it then presents. The table is bounded:
past ``max_sources`` the oldest entries are forgotten.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class _Source:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class FailureWindow:
    """Sliding window of token failures per source, with a temporary block."""

    def __init__(
        self,
        *,
        limit: int = 10,
        window_s: float = 60,
        block_s: float = 60,
        max_sources: int = 10_000,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.block_s = block_s
        self.max_sources = max_sources
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, source: str, now: float) -> int | None:
        """Seconds until ``source`` may try again (at least 1), or None when it may now."""
        with self._lock:
            entry = self._sources.get(source)
            if entry is None or entry.blocked_until <= now:
                return None
            return max(1, math.ceil(entry.blocked_until - now))

    def record_failure(self, source: str, now: float) -> bool:
        """Count one failed token from ``source``; True when this failure blocks it."""
        with self._lock:
            entry = self._sources.pop(source, None) or _Source()
            self._sources[source] = entry  # most recent last
            while len(self._sources) > self.max_sources:
                self._sources.popitem(last=False)
            entry.failures.append(now)
            while entry.failures and entry.failures[0] <= now - self.window_s:
                entry.failures.popleft()
            if len(entry.failures) >= self.limit:
                entry.failures.clear()
                entry.blocked_until = now + self.block_s
                return True
            return False
