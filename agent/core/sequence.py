"""The device's one message sequence: ``seq`` is monotonic across restarts.

Writing the counter to disk for every message would cost an fsync each time, so the
allocator *reserves* blocks: before handing out a number beyond the reserved limit it
asks the caller to persist a new limit. After a crash the agent restarts from the
persisted limit, skipping the unused rest of the block; numbers are never reused.
"""

from __future__ import annotations

DEFAULT_BLOCK = 1000


class SeqAllocator:
    """Hands out sequence numbers; ``take`` says when a new reservation must be saved."""

    def __init__(
        self, reserved_until: int = 0, *, floor: int = 0, block: int = DEFAULT_BLOCK
    ) -> None:
        """Start after everything that may have been used: the persisted reservation
        (``reserved_until``) and ``floor`` (e.g. the highest seq found in the store + 1)."""
        if block < 1:
            raise ValueError("block must be at least 1")
        self.block = block
        self._next = max(int(reserved_until), int(floor), 0)
        self._reserved_until = self._next

    @property
    def next_value(self) -> int:
        """The number the next :meth:`take` returns."""
        return self._next

    @property
    def reserved_until(self) -> int:
        """Numbers below this are reserved on disk (once the caller saved it)."""
        return self._reserved_until

    def take(self) -> tuple[int, int | None]:
        """The next seq, and the new reservation to persist *before* using it (or ``None``)."""
        seq = self._next
        self._next += 1
        if seq < self._reserved_until:
            return seq, None
        self._reserved_until = seq + self.block
        return seq, self._reserved_until
