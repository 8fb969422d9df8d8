"""Whole-image A/B slots on a Raspberry Pi with the firmware's ``tryboot``.

Layout (MBR, every FAT partition first): p1 holds only ``autoboot.txt`` (with
``tryboot_a_b=1``); slot *a* is boot partition 2 + root partition 5, slot *b* boot
partition 3 + root partition 6. ``[all] boot_partition`` is the committed slot,
``[tryboot] boot_partition`` the other one. The one-shot reboot flag makes the next boot
use ``[tryboot]``; the bootloader clears it before the OS starts, so any crash, watchdog
reset or power cut during the trial boots the committed slot again.

What the back-end persists before each step (``state_file``, on an ext4 data partition)
and what a restart does is the table of the research note (README "Raspberry Pi tryboot"):

* ``install``: ``writing`` (slot version forgotten) -> raw writes with read-back digest
  -> ``written`` (version recorded). A cut while writing leaves ``autoboot.txt`` alone:
  the old slot boots, and the half-written slot claims no version.
* ``switch_for_trial``: ``trial_armed`` -> flag set; the caller then reboots.
* first start with ``tryboot=1`` on the target: ``trial_booted``, watchdog armed.
* ``commit``: ``committing`` -> ``autoboot.txt`` rewritten (tmp, fsync, rename, fsync
  dir, re-read) -> ``committed``. A restart in ``committing`` finishes the rewrite.
* ``rollback`` before commit writes nothing to FAT: it clears the flag and the next boot
  (any reset) runs the committed slot.

At every start the back-end re-reads ``autoboot.txt`` and rewrites it from its own state
when it is missing, torn or disagrees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.adapters.slots import SLOT_NAMES, SlotStatus
from agent.adapters.tryboot_io import (
    Arm,
    Autoboot,
    AutobootFile,
    Persist,
    Region,
    TrybootError,
    Watchdog,
    autoboot_file,
    board_refusal,
    parse_autoboot,
    read_board,
    read_boot_info,
    render_autoboot,
)

ROOTFS_IMAGE = "rootfs.img"
"""The root filesystem image a bundle carries (streamed raw to the root partition)."""
BOOT_IMAGE = "boot.img"
"""The optional boot partition (FAT) image streamed raw to the boot partition."""


@dataclass(frozen=True, slots=True)
class TrybootLayout:
    """Where everything is (all injectable; defaults are a Pi's paths)."""

    state_file: Path
    autoboot: Path | AutobootFile = Path("/boot/firmware/autoboot.txt")
    device_tree: Path = Path("/proc/device-tree")
    boot_partitions: tuple[int, int] = (2, 3)
    boot_devices: tuple[Path | Region, Path | Region] = (
        Path("/dev/mmcblk0p2"),
        Path("/dev/mmcblk0p3"),
    )
    root_devices: tuple[Path | Region, Path | Region] = (
        Path("/dev/mmcblk0p5"),
        Path("/dev/mmcblk0p6"),
    )
    boot_id: Path = Path("/proc/sys/kernel/random/boot_id")


@dataclass(slots=True)
class _State:
    committed: str
    versions: dict[str, str | None]
    phase: str = "idle"
    target: str | None = None
    boot_id: str | None = None
    digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "committed": self.committed,
                "versions": self.versions,
                "phase": self.phase,
                "target": self.target,
                "boot_id": self.boot_id,
                "digests": self.digests,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        committed = str(data["committed"])
        if committed not in SLOT_NAMES:
            raise ValueError(f"committed slot {committed!r}")
        return cls(
            committed=committed,
            versions={name: data["versions"].get(name) for name in SLOT_NAMES},
            phase=str(data.get("phase") or "idle"),
            target=data.get("target"),
            boot_id=data.get("boot_id"),
            digests=dict(data.get("digests") or {}),
        )


def _other(slot: str) -> str:
    return SLOT_NAMES[1 - SLOT_NAMES.index(slot)]


class TrybootSlots:
    """The :class:`~agent.adapters.slots.Slots` interface over the Pi's tryboot."""

    def __init__(
        self,
        layout: TrybootLayout,
        *,
        arm: Arm,
        watchdog: Watchdog | None = None,
        persist: Persist | None = None,
        initial_version: str = "0.0.0",
    ) -> None:
        self.layout = layout
        self.arm = arm
        self.watchdog = watchdog
        self.persist = persist or Persist()
        self.autoboot = autoboot_file(layout.autoboot)
        if len(set(layout.boot_partitions)) != 2:
            raise TrybootError("tryboot needs two different boot partitions")
        self._state = self._load(initial_version)
        self.reconcile()

    # --- mapping and persistence -------------------------------------------------------

    def _slot_of(self, partition: int) -> str:
        try:
            return SLOT_NAMES[self.layout.boot_partitions.index(partition)]
        except ValueError:
            raise TrybootError(
                f"booted from partition {partition}, which is neither slot "
                f"({self.layout.boot_partitions[0]} or {self.layout.boot_partitions[1]})"
            ) from None

    def _partition_of(self, slot: str) -> int:
        return self.layout.boot_partitions[SLOT_NAMES.index(slot)]

    def _choice(self, committed: str) -> Autoboot:
        return Autoboot(self._partition_of(committed), self._partition_of(_other(committed)))

    def _current_boot_id(self) -> str:
        try:
            return self.layout.boot_id.read_text().strip()
        except OSError:
            return ""

    def _load(self, initial_version: str) -> _State:
        try:
            return _State.from_json(json.loads(self.layout.state_file.read_bytes()))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TrybootError(f"{self.layout.state_file} is unreadable: {exc}") from None
        # First start: the committed slot is what autoboot.txt says, else what booted.
        choice = parse_autoboot(self.autoboot.read())
        booted = read_boot_info(self.layout.device_tree)
        committed = self._slot_of(choice.default if choice else booted.partition)
        state = _State(committed=committed, versions={committed: initial_version})
        state.versions.setdefault(_other(committed), None)
        return state

    def _save(self, label: str) -> None:
        self.persist.replace_file(self.layout.state_file, self._state.to_json(), f"state:{label}")

    def _write_autoboot(self, committed: str, label: str) -> None:
        self.autoboot.replace(
            render_autoboot(self._choice(committed)), self.persist, f"autoboot:{label}"
        )

    # --- restart -----------------------------------------------------------------------

    def reconcile(self) -> None:
        """Bring disk and state in line after a (re)start: finish an interrupted commit,
        note a trial boot (and arm the watchdog), repair ``autoboot.txt``."""
        boot = read_boot_info(self.layout.device_tree)
        running = self._slot_of(boot.partition)
        state = self._state
        if state.phase == "committing" and state.target is not None:
            # The health check passed before the cut: finish what was decided.
            state.committed = state.target
            self._write_autoboot(state.committed, "finish-commit")
            state.phase = "committed"
            self._save("committed")
        elif state.phase in ("trial_armed", "trial_booted") and boot.tryboot:
            if running == state.target and state.phase == "trial_armed":
                state.phase = "trial_booted"
                state.boot_id = self._current_boot_id()
                self._save("trial-booted")
            if running == state.target and self.watchdog is not None:
                self.watchdog.arm()  # also when the agent restarts within the trial
        if parse_autoboot(self.autoboot.read()) != self._choice(state.committed):
            self._write_autoboot(state.committed, "repair")
        if not self.layout.state_file.exists():
            self._save("init")

    # --- the Slots interface -----------------------------------------------------------

    def status(self) -> SlotStatus:
        """Running slot from the device tree, committed slot from the state (kept equal
        to ``autoboot.txt [all]``); after a rollback the committed slot is reported as
        running, since it runs at the restart that follows."""
        if self.watchdog is not None:
            self.watchdog.kick()
        running = self._slot_of(read_boot_info(self.layout.device_tree).partition)
        state = self._state
        if state.phase == "rolled_back" and state.boot_id == self._current_boot_id():
            running = state.committed
        return SlotStatus(
            running=running,
            committed=state.committed,
            running_version=state.versions.get(running),
            committed_version=state.versions.get(state.committed),
            inactive=_other(running),
        )

    def board_refusal(self, needs: dict[str, Any]) -> str | None:
        """Why this board must not be flashed with an image for ``needs`` (the bundle's
        Pi models and minimum EEPROM date); None when it may."""
        return board_refusal(read_board(self.layout.device_tree), needs)

    def install(self, source: Path | None, version: str) -> None:
        """Stream ``rootfs.img`` (and ``boot.img`` when present) from ``source`` raw into
        the inactive slot's partitions, each checked by reading it back."""
        if source is None or not (Path(source) / ROOTFS_IMAGE).is_file():
            raise TrybootError(f"tryboot slots need a bundle whose payload holds {ROOTFS_IMAGE}")
        status = self.status()
        if status.in_trial:
            raise TrybootError("cannot install while a trial is running; commit or roll back")
        target = status.inactive
        self.arm(False)  # a stale flag must not boot a half-written slot
        state = self._state
        state.phase, state.target, state.digests = "writing", target, {}
        state.versions[target] = None
        self._save("writing")
        index = SLOT_NAMES.index(target)
        boot_image = Path(source) / BOOT_IMAGE
        if boot_image.is_file():
            state.digests["boot"] = self.persist.stream_raw(
                boot_image, self.layout.boot_devices[index], "raw:boot"
            )
        state.digests["root"] = self.persist.stream_raw(
            Path(source) / ROOTFS_IMAGE, self.layout.root_devices[index], "raw:root"
        )
        state.phase = "written"
        state.versions[target] = version
        self._save("written")

    def switch_for_trial(self) -> None:
        """Make sure ``[tryboot]`` names the inactive slot, then set the one-shot flag;
        the caller reboots (with ``reboot`` arming, the flag command reboots itself)."""
        status = self.status()
        if status.in_trial:
            raise TrybootError("already in a trial")
        if self._state.versions.get(status.inactive) is None:
            raise TrybootError(f"slot {status.inactive} holds no installed version")
        if parse_autoboot(self.autoboot.read()) != self._choice(self._state.committed):
            self._write_autoboot(self._state.committed, "before-trial")
        self._state.phase, self._state.target = "trial_armed", status.inactive
        self._state.boot_id = self._current_boot_id()
        self._save("trial-armed")
        self.arm(True)
        self.persist.after_write("flag:set")

    def commit(self) -> None:
        """Make the running trial slot the default in ``autoboot.txt``."""
        status = self.status()
        if not status.in_trial:
            return
        state = self._state
        state.phase, state.target = "committing", status.running
        self._save("committing")
        self._write_autoboot(status.running, "commit")
        state.committed = status.running
        state.phase = "committed"
        self._save("committed")
        if self.watchdog is not None:
            self.watchdog.disarm()

    def rollback(self) -> None:
        """Before a commit nothing on FAT changes: clear the flag; the next boot runs
        the committed slot. After a commit of the other slot while this one still runs
        (not a trial boot: a power cut before the reboot into it), rolling back keeps
        what runs: it is committed again."""
        status = self.status()
        if not status.in_trial:
            return
        if not read_boot_info(self.layout.device_tree).tryboot:
            self.commit()
            return
        self._state.phase = "rolled_back"
        self._state.boot_id = self._current_boot_id()
        self._save("rolled-back")
        self.arm(False)
        if self.watchdog is not None:
            self.watchdog.disarm()
