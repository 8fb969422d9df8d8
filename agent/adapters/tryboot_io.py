"""Raspberry Pi ``tryboot`` plumbing: the device tree, ``autoboot.txt``, the one-shot
reboot flag, raw slot writes and the hardware watchdog.

Every path and every persistent write goes through something injectable, so the
back-end (:mod:`agent.adapters.tryboot`) runs on a Pi and, in tests, against fake
device-tree directories, partition images kept as regular files and a fault-injection
hook that cuts the power after any single write (see ``Persist.after_write``).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from agent.adapters.slots import SlotError
from agent.state import fsync_dir

AUTOBOOT_MAX = 512
"""The firmware reads at most 512 bytes of ``autoboot.txt``."""
SET_REBOOT_FLAGS = 0x00038064
"""Firmware mailbox tag that sets (1) or clears (0) the one-shot tryboot flag."""
CHUNK = 1 << 20

log = logging.getLogger("agent.updater")


class TrybootError(SlotError):
    """The tryboot back-end cannot go on (unsupported firmware, bad layout, bad write)."""


# --- device tree ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootInfo:
    """How the bootloader started this boot (``/chosen/bootloader``)."""

    partition: int
    tryboot: bool


def _read_u32(path: Path) -> int:
    data = path.read_bytes()
    if len(data) != 4:
        raise TrybootError(f"{path}: expected a 4-byte big-endian integer, got {len(data)} bytes")
    return int(struct.unpack(">I", data)[0])


def read_boot_info(device_tree: Path) -> BootInfo:
    """Read the booted partition and the tryboot flag from the device tree.

    Partition 0 is what an EEPROM too old to report it gives (Pi 5 before 2024-05-13):
    the back-end cannot tell its slots apart then, so it refuses to run."""
    base = Path(device_tree) / "chosen" / "bootloader"
    try:
        partition = _read_u32(base / "partition")
        tryboot = _read_u32(base / "tryboot")
    except FileNotFoundError as exc:
        raise TrybootError(
            f"{exc.filename} is missing: this firmware does not report tryboot state "
            "(needs a Raspberry Pi bootloader with tryboot_a_b support)"
        ) from None
    if partition == 0:
        raise TrybootError(
            f"{base / 'partition'} reads 0: the bootloader EEPROM is too old to report the "
            "booted partition (Pi 5 needs 2024-05-13 or later, Pi 4 2023-05-11 or later); "
            "update it with rpi-eeprom-update"
        )
    return BootInfo(partition=partition, tryboot=tryboot == 1)


BOARD_NAMES = (
    ("Raspberry Pi Compute Module 4", "cm4"),
    ("Raspberry Pi Compute Module 5", "cm5"),
    ("Raspberry Pi 400", "pi400"),
    ("Raspberry Pi 500", "pi500"),
    ("Raspberry Pi 4", "pi4"),
    ("Raspberry Pi 5", "pi5"),
)
"""The device tree's ``model`` string prefix of each board name bundles use."""


@dataclass(frozen=True, slots=True)
class Board:
    """What this board is: its model (``pi4``...; None when not a known Pi), the
    device tree's model string, and its bootloader EEPROM's build date (None: not told)."""

    model: str | None
    model_text: str
    eeprom: date | None


def read_board(device_tree: Path) -> Board:
    """The board from ``model`` and ``chosen/bootloader/build_timestamp`` (seconds, UTC,
    big-endian u32; reported by Pi 4 class bootloaders)."""
    try:
        text = (Path(device_tree) / "model").read_bytes().rstrip(b"\0").decode("ascii", "replace")
    except OSError:
        text = ""
    model = next((name for prefix, name in BOARD_NAMES if text.startswith(prefix)), None)
    try:
        stamp = _read_u32(Path(device_tree) / "chosen" / "bootloader" / "build_timestamp")
        eeprom: date | None = datetime.fromtimestamp(stamp, UTC).date() if stamp else None
    except (OSError, TrybootError):
        eeprom = None
    return Board(model, text, eeprom)


def board_refusal(board: Board, needs: dict[str, Any]) -> str | None:
    """Why an image for ``needs`` (the manifest's ``raspberry_pi``: ``models``,
    ``min_eeprom``) must not be flashed on ``board``; None when it may."""
    models = [str(m) for m in needs.get("models") or []]
    if models and board.model not in models:
        seen = board.model_text or "no model in the device tree"
        return f"the image is for {', '.join(models)}; this board is {board.model or seen!r}"
    wanted = needs.get("min_eeprom")
    if wanted:
        if board.eeprom is None:
            return (
                f"the image needs a bootloader EEPROM from {wanted} or later and this board "
                "does not report its build date (chosen/bootloader/build_timestamp)"
            )
        if board.eeprom < date.fromisoformat(str(wanted)):
            return (
                f"the image needs a bootloader EEPROM from {wanted} or later; this one is "
                f"from {board.eeprom.isoformat()} (update it with rpi-eeprom-update)"
            )
    return None


# --- autoboot.txt ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Autoboot:
    """The A/B choice in ``autoboot.txt``: ``[all]`` (default) and ``[tryboot]`` (trial)."""

    default: int
    trial: int


def render_autoboot(choice: Autoboot) -> bytes:
    """The canonical file; both A/B variants have the same length (single-digit
    partitions), so a commit never changes the file's size."""
    return (
        f"[all]\ntryboot_a_b=1\nboot_partition={choice.default}\n"
        f"[tryboot]\nboot_partition={choice.trial}\n"
    ).encode()


def parse_autoboot(data: bytes | None) -> Autoboot | None:
    """The choice in ``data`` with the firmware's rules, or None when the file is missing,
    empty, torn, over 512 bytes or not an A/B file (``tryboot_a_b=1`` and both
    partitions)."""
    if not data or len(data) > AUTOBOOT_MAX:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    section = "all"
    values: dict[tuple[str, str], str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return None
        values[(section, key.strip())] = value.strip()
    if values.get(("all", "tryboot_a_b")) != "1":
        return None
    try:
        default = int(values[("all", "boot_partition")])
        trial = int(values[("tryboot", "boot_partition")])
    except (KeyError, ValueError):
        return None
    if not (1 <= default <= 63 and 1 <= trial <= 63) or default == trial:
        return None
    # A torn file may cut the last digit off and still parse: only a file ending in its
    # newline is complete.
    if not text.endswith("\n"):
        return None
    return Autoboot(default=default, trial=trial)


def read_autoboot(path: Path) -> Autoboot | None:
    """Parse ``path`` (None when missing or invalid)."""
    return parse_autoboot(MountedAutoboot(path).read())


class AutobootFile(Protocol):
    """Where ``autoboot.txt`` lives: partition 1 mounted on a device; in tests and the
    bench, the FAT partition 1 of a disk image (read and written with a FAT library)."""

    def read(self) -> bytes | None:
        """The file's first 513 bytes (enough to see it is over the limit); None when
        it is missing or unreadable."""
        ...

    def replace(self, data: bytes, persist: Persist, label: str) -> None:
        """Replace the file as safely as the filesystem allows, calling
        ``persist.after_write`` after each persistent write."""
        ...


Remount = Callable[[bool], None]
"""Make a filesystem writable (True) or read-only again (False)."""


def command_remount(mountpoint: Path) -> Remount:
    """``mount -o remount,rw|ro MOUNTPOINT``."""

    def remount(writable: bool) -> None:
        argv = ["mount", "-o", "remount,rw" if writable else "remount,ro", str(mountpoint)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TrybootError(f"{' '.join(argv)} failed: {exc}") from None
        if done.returncode != 0:
            raise TrybootError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")

    return remount


class MountedAutoboot:
    """``autoboot.txt`` on the mounted FAT partition 1 (``/boot/firmware`` on a Pi); with
    ``remount`` the partition stays read-only except while the file is replaced."""

    def __init__(self, path: Path, remount: Remount | None = None) -> None:
        self.path = Path(path)
        self.remount = remount

    def read(self) -> bytes | None:
        """See :meth:`AutobootFile.read`."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read(AUTOBOOT_MAX + 1)
        except OSError:
            return None

    def replace(self, data: bytes, persist: Persist, label: str) -> None:
        """Temp file, fsync, rename, fsync the directory, re-read (see
        :meth:`Persist.replace_file`), between a read-write and a read-only remount."""
        if self.remount is None:
            persist.replace_file(self.path, data, label)
            return
        self.remount(True)
        try:
            persist.replace_file(self.path, data, label)
        finally:
            try:
                self.remount(False)
            except TrybootError as exc:  # written and synced: a writable FAT is the lesser harm
                log.error("autoboot.txt written, but %s", exc)


def autoboot_file(where: Path | AutobootFile) -> AutobootFile:
    """A path is the mounted file; anything else already is an :class:`AutobootFile`."""
    return MountedAutoboot(where) if isinstance(where, str | Path) else where


@dataclass(frozen=True, slots=True)
class Region:
    """A partition as a byte range: a whole device node (``offset`` 0, ``size`` None) or
    a range of a disk image (tests and the bench: no loop devices needed)."""

    path: Path
    offset: int = 0
    size: int | None = None

    @classmethod
    def of(cls, where: Path | Region) -> Region:
        """A path is the whole device or file."""
        return where if isinstance(where, Region) else cls(Path(where))


# --- persistent writes (the fault-injection seam) ----------------------------------------


class Persist:
    """Every write the back-end persists, each followed by ``after_write(label)``.

    On a device ``after_write`` does nothing; a test sets it to cut the power (raise)
    after the n-th write, then boots its fake firmware on what is on disk."""

    def __init__(
        self,
        after_write: Callable[[str], None] | None = None,
        chunk: int = CHUNK,
        *,
        sync: bool = True,
    ) -> None:
        self.after_write = after_write or (lambda label: None)
        self.chunk = chunk
        """Bytes per raw write (each one fsynced and followed by ``after_write``)."""
        self.sync = sync
        """False only on a fake board (tests, the bench), whose power cuts fall between
        whole writes anyway: fsync would only make them slow."""

    def _fsync(self, fd: int) -> None:
        if self.sync:
            os.fsync(fd)

    def _fsync_dir(self, path: Path) -> None:
        if self.sync:
            fsync_dir(path)

    def replace_file(self, path: Path, data: bytes, label: str) -> None:
        """Write ``data`` to ``path`` as safely as the filesystem allows: a temporary file
        in the same directory, fsync, rename over ``path``, fsync the directory, then
        re-read and verify (FAT has no journal: this narrows the window, it cannot close
        it; the back-end repairs a torn file from its own state at every start)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.new")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            self._fsync(handle.fileno())
        self.after_write(f"{label}:tmp")
        os.replace(tmp, path)
        self._fsync_dir(path.parent)
        self.after_write(f"{label}:rename")
        if path.read_bytes() != data:
            raise TrybootError(f"{path}: read back differs from what was written")

    def stream_raw(self, source: Path, device: Path | Region, label: str) -> str:
        """Copy ``source`` raw onto ``device`` (a partition, or a range of a disk image),
        fsync, then read the written range back and compare digests; a device that holds
        the image already is not written. Returns the SHA-256 hex digest. Never holds more
        than ``chunk`` bytes in memory."""
        region = Region.of(device)
        size = Path(source).stat().st_size
        capacity = _capacity(region)
        if capacity is not None and size > capacity:
            raise TrybootError(
                f"{source.name} is {size} bytes; {region.path} holds only {capacity}"
            )
        with open(source, "rb") as src:
            wanted = _digest_prefix(src, size, self.chunk)
        with open(region.path, "rb") as dev:
            dev.seek(region.offset)
            if _digest_prefix(dev, size, self.chunk) == wanted:
                # Already there (a rollback after a commit: the old slot still holds the
                # image): nothing is written, the trial boots it as it is.
                return wanted
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(region.path, "r+b") as dst:
            dst.seek(region.offset)
            index = 0
            while block := src.read(self.chunk):
                digest.update(block)
                dst.write(block)
                dst.flush()
                self._fsync(dst.fileno())
                self.after_write(f"{label}:chunk{index}")
                index += 1
        expected = digest.hexdigest()
        with open(region.path, "rb") as dev:
            dev.seek(region.offset)
            written = _digest_prefix(dev, size, self.chunk)
        if written != expected:
            raise TrybootError(f"{region.path}: read-back digest {written} != {expected}")
        return expected


def _capacity(region: Region) -> int | None:
    """Bytes the partition holds (None for a whole regular file, which grows)."""
    if region.size is not None:
        return region.size
    if Path(region.path).is_file():
        return None
    with open(region.path, "rb") as handle:
        return handle.seek(0, os.SEEK_END) - region.offset


def _digest_prefix(handle: BinaryIO, size: int, chunk: int) -> str:
    digest = hashlib.sha256()
    left = size
    while left > 0:
        block = handle.read(min(chunk, left))
        if not block:
            break
        digest.update(block)
        left -= len(block)
    return digest.hexdigest()


# --- arming the one-shot flag ----------------------------------------------------------

Arm = Callable[[bool], None]
"""Set (True) or clear (False) the firmware's one-shot tryboot flag."""


def _mailbox_ioctl_number() -> int:
    """``_IOWR(100, 0, char *)``: 0xC0086400 on 64-bit, 0xC0046400 on 32-bit kernels."""
    return (3 << 30) | (struct.calcsize("P") << 16) | (100 << 8)


def vcio_arm(device: Path = Path("/dev/vcio"), ioctl: Callable[..., Any] = fcntl.ioctl) -> Arm:
    """Set the flag with the property-mailbox ioctl on ``/dev/vcio`` (works on mainline
    kernels too, where ``reboot "0 tryboot"`` is ignored). The request is 7 words: size,
    request code, tag, value size, tag request code, value, end tag; the firmware answers
    0x80000000 in word 1."""

    def arm(on: bool) -> None:
        buffer = bytearray(struct.pack("<7I", 28, 0, SET_REBOOT_FLAGS, 4, 0, int(on), 0))
        with open(device, "r+b", buffering=0) as handle:
            ioctl(handle.fileno(), _mailbox_ioctl_number(), buffer, True)
        response = struct.unpack("<7I", buffer)[1]
        if response != 0x80000000:
            raise TrybootError(f"{device}: the firmware refused SET_REBOOT_FLAGS ({response:#x})")

    return arm


def command_arm(argv_on: list[str], argv_off: list[str] | None) -> Arm:
    """Set the flag by running a command (``vcmailbox 0x00038064 4 0 1``, or
    ``reboot "0 tryboot"``, which also reboots); ``argv_off`` None: clearing is a no-op
    (the flag dies with the next reset anyway)."""

    def arm(on: bool) -> None:
        argv = argv_on if on else argv_off
        if argv is None:
            return
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise TrybootError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    return arm


ARM_WAYS = ("vcio", "vcmailbox", "reboot")


def make_arm(way: str) -> Arm:
    """The arming way named in the config (``updates.tryboot_arm``)."""
    if way == "vcio":
        return vcio_arm()
    if way == "vcmailbox":
        tag = f"{SET_REBOOT_FLAGS:#010x}"
        return command_arm(["vcmailbox", tag, "4", "0", "1"], ["vcmailbox", tag, "4", "0", "0"])
    if way == "reboot":
        return command_arm(["reboot", "0 tryboot"], None)
    raise TrybootError(f"unknown arming way {way!r}; use one of {', '.join(ARM_WAYS)}")


# --- hardware watchdog -----------------------------------------------------------------


class Watchdog:
    """The Linux watchdog device, held open during a trial boot.

    Opening it starts the hardware timer; every :meth:`kick` restarts it; :meth:`disarm`
    writes the magic ``V`` and closes, which stops it. If the agent hangs during the
    health check, the board resets and, the tryboot flag being already cleared, boots the
    known-good slot."""

    def __init__(self, device: Path) -> None:
        self.device = Path(device)
        self._handle: BinaryIO | None = None

    @property
    def armed(self) -> bool:
        """True while the device is held open."""
        return self._handle is not None

    def arm(self) -> None:
        """Open the device (starts the timer)."""
        if self._handle is None:
            self._handle = open(self.device, "wb", buffering=0)  # noqa: SIM115 (held open)
        self.kick()

    def kick(self) -> None:
        """Restart the timer (no-op when not armed)."""
        if self._handle is not None:
            self._handle.write(b"\0")

    def disarm(self) -> None:
        """Magic close: stop the timer."""
        if self._handle is not None:
            self._handle.write(b"V")
            self._handle.close()
            self._handle = None
