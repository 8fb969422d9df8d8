"""A static mirror with HTTP Range support that can cut a download mid-way, for tests.

A thin test-facing view of :mod:`simulator.mirror` (the QA bench's mirror): tests set
``control.cut_next_target_after`` and read ``control.requests`` (each request's path and
``Range`` header) to prove that the agent resumes a download instead of starting over.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from simulator.mirror import MirrorState, serve_mirror


class MirrorControl:
    """Knobs and observations of a running mirror."""

    def __init__(self, state: MirrorState) -> None:
        self._state = state

    @property
    def root(self) -> Path:
        """The directory served."""
        return self._state.root

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        """``(path, Range header)`` of every request so far."""
        return self._state.requests

    @property
    def cut_next_target_after(self) -> int | None:
        """Bytes after which the next target download is cut (None: no cut pending)."""
        return self._state.cut_target_after

    @cut_next_target_after.setter
    def cut_next_target_after(self, value: int | None) -> None:
        if value is None:
            with self._state.lock:
                self._state.cut_target_after = None
        else:
            self._state.cut_next_download(value)


@contextmanager
def flaky_mirror(root: Path) -> Iterator[tuple[str, MirrorControl]]:
    """Serve ``root`` on a free loopback port; yields ``(base_url, control)``."""
    with serve_mirror(root) as (base, state):
        yield base, MirrorControl(state)
