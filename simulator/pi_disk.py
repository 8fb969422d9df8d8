"""A Raspberry Pi's SD card as a disk image: a real MBR partition table (with an extended
partition holding the root partitions) and FAT partitions, built and read without loop
devices or a kernel vfat driver (the FAT side through ``pyfatfs``).

Layout, as the README's tryboot section describes it (sizes shrunk for tests and the
bench): p1 FAT ``BOOTCFG`` holding only ``autoboot.txt``; p2 ``boot_a`` and p3 ``boot_b``
(FAT, each with the firmware files, ``config.txt``, ``cmdline.txt``); p4 extended; p5
``root_a`` and p6 ``root_b`` (Linux). The agent's state lives on a data partition (p7 on
a device); the fake board keeps it in a directory beside the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from agent.adapters.tryboot_io import AUTOBOOT_MAX, Persist, TrybootError

SECTOR = 512
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
EXTENDED_TYPES = frozenset({0x05, 0x0F})
LINUX = 0x83
FAT12 = 0x01
MAX_LOGICAL = 16
"""A longer EBR chain is treated as a loop (a corrupt table)."""

BOOTCFG_SECTORS = 256  # 128 KiB
BOOT_SECTORS = 512  # 256 KiB
ROOT_SECTORS = 1024  # 512 KiB
GAP = 64
"""Sectors before each partition (the MBR or an EBR sits in the first)."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One MBR partition: its number (1-4 primary, 5+ logical), type and byte range."""

    number: int
    kind: int
    offset: int
    size: int

    @property
    def is_fat(self) -> bool:
        """A FAT12/16/32 partition type (what the Pi bootloader looks at)."""
        return self.kind in FAT_TYPES


def _entry(kind: int, start: int, sectors: int) -> bytes:
    # status, CHS first (unused: 0xFEFFFF as for LBA-only tables), type, CHS last, LBA, count
    return struct.pack("<B3sB3sII", 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff", start, sectors)


def _table(entries: list[bytes], disk_id: int | None = None) -> bytes:
    body = bytearray(SECTOR)
    if disk_id is not None:
        body[440:444] = struct.pack("<I", disk_id)
    for index, entry in enumerate(entries):
        body[446 + 16 * index : 462 + 16 * index] = entry
    body[510:512] = b"\x55\xaa"
    return bytes(body)


def read_partitions(disk: Path) -> dict[int, Partition]:
    """The partitions of ``disk``'s MBR, logical ones followed through the EBR chain.
    Raises :class:`TrybootError` when there is no valid MBR."""
    with open(disk, "rb") as handle:
        mbr = handle.read(SECTOR)
        if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
            raise TrybootError(f"{disk}: no MBR partition table")
        found: dict[int, Partition] = {}
        extended: tuple[int, int] | None = None
        for index in range(4):
            _s, _c, kind, _c2, start, count = struct.unpack_from("<B3sB3sII", mbr, 446 + 16 * index)
            if kind == 0 or count == 0:
                continue
            found[index + 1] = Partition(index + 1, kind, start * SECTOR, count * SECTOR)
            if kind in EXTENDED_TYPES:
                extended = (start, count)
        if extended is None:
            return found
        ebr_at, number = extended[0], 5
        while number < 5 + MAX_LOGICAL:
            handle.seek(ebr_at * SECTOR)
            ebr = handle.read(SECTOR)
            if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
                break
            _s, _c, kind, _c2, rel, count = struct.unpack_from("<B3sB3sII", ebr, 446)
            if kind and count:
                found[number] = Partition(number, kind, (ebr_at + rel) * SECTOR, count * SECTOR)
                number += 1
            _s, _c, kind, _c2, next_rel, _n = struct.unpack_from("<B3sB3sII", ebr, 462)
            if kind not in EXTENDED_TYPES or next_rel == 0:
                break
            ebr_at = extended[0] + next_rel
        return found


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pyfatfs' filesystem layer imports pkg_resources, which warns about itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _fatfs(disk: Path, offset: int, *, read_only: bool) -> Any:
    with _quiet():
        from pyfatfs.PyFatFS import PyFatFS

        return PyFatFS(str(disk), offset=offset, read_only=read_only, lazy_load=False)


def fat_image(files: dict[str, bytes], sectors: int, label: str) -> bytes:
    """A FAT12 filesystem of ``sectors`` sectors holding ``files`` (root directory)."""
    with _quiet():
        from pyfatfs.PyFat import PyFat
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fat.img"
        path.write_bytes(b"")
        fat = PyFat()
        fat.mkfs(str(path), PyFat.FAT_TYPE_FAT12, size=sectors * SECTOR, label=label, volume_id=1)
        fat.close()
        fs = _fatfs(path, 0, read_only=False)
        try:
            for name, data in files.items():
                fs.writebytes(f"/{name}", data)
        finally:
            fs.close()
        return path.read_bytes()


def fat_files(disk: Path, part: Partition) -> dict[str, bytes] | None:
    """The root directory of a FAT partition (None: not FAT, or unreadable)."""
    if not part.is_fat:
        return None
    with open(disk, "rb") as handle:
        handle.seek(part.offset)
        raw = handle.read(part.size)
    files = _fat_files(raw)
    return None if files is None else dict(files)


@lru_cache(maxsize=64)
def _fat_files(raw: bytes) -> tuple[tuple[str, bytes], ...] | None:
    # keyed by the partition's bytes: a partition nobody wrote is not parsed again
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.img"
        path.write_bytes(raw)
        try:
            fs = _fatfs(path, 0, read_only=True)
        except Exception:  # a torn or foreign filesystem is simply not FAT
            return None
        try:
            return tuple((name, fs.readbytes(f"/{name}")) for name in fs.listdir("/"))
        except Exception:  # torn directory entries: not readable FAT
            return None
        finally:
            fs.close()


class FatAutoboot:
    """``autoboot.txt`` on the FAT partition 1 of a disk image (the back-end's
    :class:`~agent.adapters.tryboot_io.AutobootFile` on the fake board): a new file
    ``.autoboot.txt.new`` is written, then renamed over the old one, then read back,
    with ``persist.after_write`` after each of the two writes, as on a mounted FAT."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk

    def _part(self) -> Partition:
        return read_partitions(self.disk)[1]

    def read(self) -> bytes | None:
        """See ``AutobootFile.read``."""
        files = fat_files(self.disk, self._part())
        data = None if files is None else files.get("autoboot.txt")
        return None if data is None else data[: AUTOBOOT_MAX + 1]

    def write_raw(self, data: bytes | None) -> None:
        """Put ``data`` there (None: delete it) without any care (tests tear it)."""
        fs = _fatfs(self.disk, self._part().offset, read_only=False)
        try:
            if data is None:
                if fs.exists("/autoboot.txt"):
                    fs.remove("/autoboot.txt")
            else:
                fs.writebytes("/autoboot.txt", data)
        finally:
            fs.close()

    def replace(self, data: bytes, persist: Persist, label: str) -> None:
        """See ``AutobootFile.replace``."""
        offset = self._part().offset
        fs = _fatfs(self.disk, offset, read_only=False)
        try:
            fs.writebytes("/.autoboot.txt.new", data)
        finally:
            fs.close()
        persist.after_write(f"{label}:tmp")
        fs = _fatfs(self.disk, offset, read_only=False)
        try:
            fs.move("/.autoboot.txt.new", "/autoboot.txt", overwrite=True)
        finally:
            fs.close()
        persist.after_write(f"{label}:rename")
        if self.read() != data:
            raise TrybootError(f"{self.disk}: autoboot.txt read back differs")


def autoboot_text(default: int, trial: int) -> bytes:
    """An A/B ``autoboot.txt`` as an image builder writes it."""
    return (
        f"[all]\ntryboot_a_b=1\nboot_partition={default}\n[tryboot]\nboot_partition={trial}\n"
    ).encode()


@lru_cache(maxsize=16)
def boot_image(version: str) -> bytes:
    """A boot partition image (FAT) for ``version``: firmware, ``config.txt``,
    ``cmdline.txt`` and a ``VERSION`` file (cached: the same bytes for a version)."""
    files = {
        "start4.elf": b"fake VideoCore firmware " + version.encode(),
        "fixup4.dat": b"fake fixup",
        "kernel8.img": b"fake kernel " + version.encode(),
        "config.txt": b"arm_64bit=1\ndtparam=watchdog=on\n",
        "cmdline.txt": b"console=serial0,115200 rootwait panic=10\n",
        "VERSION": version.encode() + b"\n",
    }
    return fat_image(files, BOOT_SECTORS, "BOOT")


@lru_cache(maxsize=16)
def root_image(version: str, size: int = ROOT_SECTORS * SECTOR // 2) -> bytes:
    """A root filesystem image for ``version`` (distinct bytes per version)."""
    head = b"ROOTFS" + version.encode() + b"\n"
    pattern = hashlib.sha256(version.encode()).digest()
    body = pattern * ((size - len(head)) // len(pattern) + 1)
    return head + body[: size - len(head)]


@lru_cache(maxsize=4)
def pristine_disk(version: str) -> bytes:
    """A freshly flashed card: slot a holds ``version``, slot b is empty, ``autoboot.txt``
    says a is the default and b the trial."""
    bootcfg = fat_image({"autoboot.txt": autoboot_text(2, 3)}, BOOTCFG_SECTORS, "BOOTCFG")
    p1 = GAP
    p2 = p1 + BOOTCFG_SECTORS + GAP
    p3 = p2 + BOOT_SECTORS + GAP
    ext = p3 + BOOT_SECTORS + GAP
    logical = GAP + ROOT_SECTORS  # EBR + gap + root
    total = ext + 2 * logical
    disk = bytearray(total * SECTOR)
    disk[0:SECTOR] = _table(
        [
            _entry(FAT12, p1, BOOTCFG_SECTORS),
            _entry(FAT12, p2, BOOT_SECTORS),
            _entry(FAT12, p3, BOOT_SECTORS),
            _entry(0x0F, ext, 2 * logical),
        ],
        disk_id=0x5AB0_0001,
    )
    for index in range(2):
        ebr = ext + index * logical
        follow = [_entry(0x05, (index + 1) * logical, logical)] if index == 0 else []
        disk[ebr * SECTOR : (ebr + 1) * SECTOR] = _table(
            [_entry(LINUX, GAP, ROOT_SECTORS), *follow]
        )
    disk[p1 * SECTOR : p1 * SECTOR + len(bootcfg)] = bootcfg
    boot = boot_image(version)
    disk[p2 * SECTOR : p2 * SECTOR + len(boot)] = boot
    root = root_image(version)
    root_at = (ext + GAP) * SECTOR
    disk[root_at : root_at + len(root)] = root
    return bytes(disk)
