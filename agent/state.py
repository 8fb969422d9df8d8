"""The agent's small persistent state file, written atomically.

``state.json`` in the state directory holds the seq reservation, the previous run
(boot id, kernel boot time, clean stop, intended restart), the recent start times and the
fault rules' state. Writes go to a temporary file that is fsynced and renamed over the
old one (:func:`firmware_bundles.files.atomic_write`, re-exported here for the agent), so
power loss leaves either the old or the new file, never a torn one. A
corrupt file is moved aside (``state.json.corrupt``) and the agent starts fresh rather
than refusing to run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from firmware_bundles.files import atomic_write, fsync_dir

log = logging.getLogger(__name__)

STATE_FILE = "state.json"

__all__ = ["STATE_FILE", "StateFile", "atomic_write", "fsync_dir", "read_state"]


class StateFile:
    """Read-modify-write access to ``state.json`` (one writer: the agent process)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.data: dict[str, Any] = {}
        self.was_corrupt = False

    def load(self) -> dict[str, Any]:
        """Read the state; a missing file is an empty state, a corrupt one is set aside."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.data = {}
            return self.data
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            self.was_corrupt = True
            aside = self.path.with_name(self.path.name + ".corrupt")
            log.error(
                "state file %s is corrupt (%s); moved to %s, starting fresh", self.path, exc, aside
            )
            os.replace(self.path, aside)
            data = {}
        self.data = data
        return self.data

    def save(self, **updates: Any) -> None:
        """Merge ``updates`` into the state and write it atomically."""
        self.data.update(updates)
        atomic_write(
            self.path, json.dumps(self.data, sort_keys=True, separators=(",", ":")).encode()
        )


def read_state(state_dir: Path) -> dict[str, Any]:
    """The state as last written (read-only, for ``fleet-agent status``)."""
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
