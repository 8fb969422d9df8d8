"""A/B slot back-ends: where an update is written and how the device switches to it.

Every back-end offers the same small interface (:class:`Slots`), so the update flow does
not care whether it runs on a Raspberry Pi, a plain Linux box or in the simulator:

* the running slot is never written; an update goes to the *inactive* slot;
* ``switch_for_trial`` makes the inactive slot the one that runs next, *once* (like the
  Pi's ``tryboot``): until ``commit`` it is a trial and ``rollback`` returns to the
  known-good slot;
* every step is atomic, so a power cut leaves either the old or the new slot in place.

:class:`DirectorySlots` is real on any Linux: two directories and two symlinks swapped
with ``rename(2)``. :class:`SimulatedSlots` keeps the same state in memory.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.state import atomic_write, fsync_dir

SLOT_NAMES = ("a", "b")
VERSION_FILE = "VERSION"


class SlotError(RuntimeError):
    """A slot operation failed; the running slot is untouched."""


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """Which slot runs, which is known-good, and their versions."""

    running: str
    committed: str
    running_version: str | None
    committed_version: str | None
    inactive: str

    @property
    def in_trial(self) -> bool:
        """True while running a slot that has not been committed."""
        return self.running != self.committed


class Slots(Protocol):
    """What the update flow needs from a slot back-end."""

    def status(self) -> SlotStatus:
        """Current slot layout."""
        ...

    def install(self, source: Path | None, version: str) -> None:
        """Replace the inactive slot's content with ``source`` (a directory; None for a
        back-end that keeps no files)."""
        ...

    def switch_for_trial(self) -> None:
        """Run the inactive slot next, as a trial."""
        ...

    def commit(self) -> None:
        """Make the running (trial) slot the known-good one."""
        ...

    def rollback(self) -> None:
        """Run the known-good slot again."""
        ...


def _other(slot: str) -> str:
    return SLOT_NAMES[1 - SLOT_NAMES.index(slot)]


class DirectorySlots:
    """A/B directories under ``root`` with atomic symlink swaps.

    Layout: ``root/slot-a``, ``root/slot-b`` (content plus a ``VERSION`` file),
    ``root/current`` (symlink to what runs) and ``root/committed`` (symlink to the
    known-good slot). A service started from ``root/current`` therefore runs the new
    version after ``switch_for_trial`` and a restart, and the old one after ``rollback``.
    """

    def __init__(self, root: Path, *, initial_version: str = "0.0.0") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for name in SLOT_NAMES:
            (self.root / f"slot-{name}").mkdir(exist_ok=True)
        if not (self.root / "current").is_symlink():
            slot_a = self.root / "slot-a"
            if not (slot_a / VERSION_FILE).exists():
                self._write_version(slot_a, initial_version)
            self._point("current", "a")
        if not (self.root / "committed").is_symlink():
            self._point("committed", self._target("current"))

    def _slot_dir(self, name: str) -> Path:
        return self.root / f"slot-{name}"

    def _target(self, link: str) -> str:
        target = os.readlink(self.root / link)
        name = Path(target).name.removeprefix("slot-")
        if name not in SLOT_NAMES:
            raise SlotError(f"{self.root / link} points at {target!r}, not a slot")
        return name

    def _point(self, link: str, slot: str) -> None:
        tmp = self.root / f".{link}.tmp"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(f"slot-{slot}", tmp)
        os.replace(tmp, self.root / link)
        fsync_dir(self.root)

    @staticmethod
    def _write_version(slot_dir: Path, version: str) -> None:
        atomic_write(slot_dir / VERSION_FILE, f"{version}\n".encode(), 0o644)

    def _version(self, slot: str) -> str | None:
        path = self._slot_dir(slot) / VERSION_FILE
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def status(self) -> SlotStatus:
        """Read the layout from the symlinks (the source of truth)."""
        running, committed = self._target("current"), self._target("committed")
        return SlotStatus(
            running=running,
            committed=committed,
            running_version=self._version(running),
            committed_version=self._version(committed),
            inactive=_other(running),
        )

    def install(self, source: Path | None, version: str) -> None:
        """Copy ``source`` into the inactive slot; ``VERSION`` is written last, so a slot
        whose copy was interrupted never claims the new version."""
        if source is None:
            raise SlotError("directory slots need the unpacked payload to install")
        status = self.status()
        if status.in_trial:
            raise SlotError("cannot install while a trial is running; commit or roll back first")
        target = self._slot_dir(status.inactive)
        shutil.rmtree(target)
        target.mkdir()
        for entry in sorted(Path(source).iterdir()):
            destination = target / entry.name
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, destination, symlinks=False)
            else:
                shutil.copy2(entry, destination)
        fsync_dir(target)
        self._write_version(target, version)

    def switch_for_trial(self) -> None:
        """Point ``current`` at the inactive slot; ``committed`` keeps the old one."""
        status = self.status()
        if status.in_trial:
            raise SlotError("already in a trial")
        if self._version(status.inactive) is None:
            raise SlotError(f"slot {status.inactive} holds no installed version")
        self._point("current", status.inactive)

    def commit(self) -> None:
        """Point ``committed`` at the running slot."""
        self._point("committed", self._target("current"))

    def rollback(self) -> None:
        """Point ``current`` back at the committed slot."""
        self._point("current", self._target("committed"))


class SimulatedSlots:
    """In-memory slots with the same semantics, for simulated devices and unit tests."""

    def __init__(self, initial_version: str = "0.0.0") -> None:
        self._versions: dict[str, str | None] = {"a": initial_version, "b": None}
        self._running = "a"
        self._committed = "a"
        self.installs = 0

    def status(self) -> SlotStatus:
        """Current slot layout."""
        return SlotStatus(
            running=self._running,
            committed=self._committed,
            running_version=self._versions[self._running],
            committed_version=self._versions[self._committed],
            inactive=_other(self._running),
        )

    def install(self, source: Path | None, version: str) -> None:
        """Record ``version`` in the inactive slot (``source`` is not read)."""
        if self._running != self._committed:
            raise SlotError("cannot install while a trial is running; commit or roll back first")
        self._versions[_other(self._running)] = version
        self.installs += 1

    def switch_for_trial(self) -> None:
        """Run the inactive slot next."""
        inactive = _other(self._running)
        if self._running != self._committed:
            raise SlotError("already in a trial")
        if self._versions[inactive] is None:
            raise SlotError(f"slot {inactive} holds no installed version")
        self._running = inactive

    def commit(self) -> None:
        """Keep the running slot."""
        self._committed = self._running

    def rollback(self) -> None:
        """Run the known-good slot again."""
        self._running = self._committed
