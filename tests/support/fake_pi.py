"""A fake Raspberry Pi for the tryboot back-end: a pure Python model of the bootloader.

Partitions are regular files (``dev/boot_a.img`` ...), p1 is a directory holding
``autoboot.txt``, the one-shot flag lives in a "reset register" file that the firmware
clears when it reads it, and a boot writes the device-tree files the back-end reads
(``dt/chosen/bootloader/{partition,tryboot}``, big-endian u32) plus a fresh boot id.

The firmware rules modelled: ``autoboot.txt`` of at most 512 bytes with ``[all]`` and
``[tryboot]`` sections and ``tryboot_a_b=1``; the flag picks ``[tryboot]``; a partition
is bootable when its boot image carries the boot magic; a missing or invalid
``autoboot.txt`` or a non-bootable choice falls to partition 1 (which holds no firmware:
no boot) or, with ``PARTITION_WALK``, to the first bootable partition.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import ClassVar

from agent.adapters.tryboot import TrybootLayout
from agent.adapters.tryboot_io import parse_autoboot

BOOT_MAGIC = b"PIBOOT"


def boot_image(version: str, size: int = 3000) -> bytes:
    """A fake boot partition image (the magic, the version, padding)."""
    head = BOOT_MAGIC + version.encode() + b"\n"
    return head + bytes((i * 7 + len(version)) % 251 for i in range(size - len(head)))


def root_image(version: str, size: int = 9000) -> bytes:
    """A fake root filesystem image, distinct per version."""
    head = b"ROOTFS" + version.encode() + b"\n"
    return head + bytes((i * 13 + len(version) * 3) % 253 for i in range(size - len(head)))


class FakePi:
    """Disk, reset register and device tree of one fake board under ``root``."""

    PARTITIONS: ClassVar[dict[int, str]] = {2: "a", 3: "b"}

    def __init__(self, root: Path, *, partition_walk: bool = True, version: str = "1") -> None:
        self.root = root
        self.partition_walk = partition_walk
        for sub in ("bootcfg", "dev", "state", "dt/chosen/bootloader"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.register = root / "reset-register"
        self.register.write_bytes(b"0")
        for slot in "ab":
            self.device("boot", slot).write_bytes(b"")
            self.device("root", slot).write_bytes(b"")
        self.device("boot", "a").write_bytes(boot_image(version))
        self.device("root", "a").write_bytes(root_image(version))
        self.autoboot.write_bytes(
            b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        )
        self.booted: int | None = None
        self.boot()

    @property
    def autoboot(self) -> Path:
        """``autoboot.txt`` on partition 1."""
        return self.root / "bootcfg" / "autoboot.txt"

    def device(self, kind: str, slot: str) -> Path:
        """The file standing for a slot's boot or root partition."""
        return self.root / "dev" / f"{kind}_{slot}.img"

    def layout(self) -> TrybootLayout:
        """The back-end's paths on this board."""
        return TrybootLayout(
            state_file=self.root / "state" / "tryboot.json",
            autoboot=self.autoboot,
            device_tree=self.root / "dt",
            boot_devices=(self.device("boot", "a"), self.device("boot", "b")),
            root_devices=(self.device("root", "a"), self.device("root", "b")),
            boot_id=self.root / "boot_id",
        )

    def arm(self, on: bool) -> None:
        """The mailbox: set or clear the one-shot flag."""
        self.register.write_bytes(b"1" if on else b"0")

    def flag(self) -> bool:
        """The flag as the firmware would read it."""
        return self.register.read_bytes() == b"1"

    def bootable(self, partition: int) -> bool:
        """A slot's boot partition holds firmware (the boot magic)."""
        slot = self.PARTITIONS.get(partition)
        return slot is not None and self.device("boot", slot).read_bytes().startswith(BOOT_MAGIC)

    def boot(self) -> int | None:
        """Power on: read and clear the flag, choose a partition, write the device tree.
        Returns the booted partition (None: the board does not boot)."""
        tryboot = self.flag()
        self.register.write_bytes(b"0")
        try:
            choice = parse_autoboot(self.autoboot.read_bytes())
        except FileNotFoundError:
            choice = None
        wanted = None if choice is None else (choice.trial if tryboot else choice.default)
        if wanted is None or not self.bootable(wanted):
            tryboot = False
            walk = [p for p in range(1, 9) if self.bootable(p)] if self.partition_walk else []
            wanted = walk[0] if walk else None
        self.booted = wanted
        base = self.root / "dt" / "chosen" / "bootloader"
        base.joinpath("partition").write_bytes(struct.pack(">I", wanted or 0))
        base.joinpath("tryboot").write_bytes(struct.pack(">I", int(tryboot)))
        (self.root / "boot_id").write_text(str(uuid.uuid4()))
        return wanted

    def slot_content(self, slot: str) -> tuple[bytes, bytes]:
        """What a slot holds (boot image, root image)."""
        return self.device("boot", slot).read_bytes(), self.device("root", slot).read_bytes()
