"""A fake Raspberry Pi for the tryboot back-end: a pure Python model of the bootloader
reading a disk image (:mod:`simulator.pi_disk`: MBR, FAT partitions).

At each power-on the model reads and clears the one-shot flag (a "reset register" file,
as the firmware's register is cleared when read), reads ``autoboot.txt`` from FAT
partition 1 with the firmware's rules (only its first 512 bytes; ``[all]``, ``[none]``
and ``[tryboot]`` sections, the last value winning; ``[tryboot]`` applies only with the
flag), picks the partition, checks it is bootable (a FAT partition holding
``start4.elf``, or ``config.txt`` on a Pi 5), falls back when it is not (to the first
bootable partition with ``PARTITION_WALK``, else partition 1) and "boots" by writing the
device-tree files the back-end reads (``chosen/bootloader/{partition,tryboot,
build_timestamp}`` as big-endian u32, ``model``) and a fresh boot id.

The firmware's parser here is written apart from the agent's, so the two check each other.
"""

from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path
from typing import Any, ClassVar

from agent.adapters.tryboot import BOOT_IMAGE, ROOTFS_IMAGE, TrybootLayout
from agent.adapters.tryboot_io import Region
from simulator.pi_disk import (
    FatAutoboot,
    Partition,
    boot_image,
    fat_files,
    pristine_disk,
    read_partitions,
    root_image,
)

__all__ = [
    "MODELS",
    "FakePi",
    "boot_image",
    "build_image_bundle",
    "firmware_choice",
    "root_image",
]

MODELS = {
    "pi4": "Raspberry Pi 4 Model B Rev 1.5",
    "pi5": "Raspberry Pi 5 Model B Rev 1.0",
    "cm4": "Raspberry Pi Compute Module 4 Rev 1.1",
}
"""Model strings the fake device tree reports (``/proc/device-tree/model``)."""
EEPROM_2025_08_13 = 1755043200
"""``build_timestamp`` of a recent bootloader EEPROM (seconds, UTC)."""


def firmware_choice(text: bytes | None, tryboot: bool) -> int:
    """The partition the firmware's ``autoboot.txt`` rules pick (0: the default)."""
    if not text:
        return 0
    section, partition = "all", 0
    for raw in text[:512].decode("ascii", "replace").split("\n"):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        applies = section == "all" or (section == "tryboot" and tryboot)
        key, _sep, value = line.partition("=")
        if applies and key.strip() == "boot_partition" and value.strip().isdigit():
            partition = int(value.strip())
    return partition


class FakePi:
    """One fake board under ``root``: ``disk.img``, the reset register, the device tree."""

    PARTITIONS: ClassVar[dict[int, str]] = {2: "a", 3: "b"}
    ROOTS: ClassVar[dict[str, int]] = {"a": 5, "b": 6}

    def __init__(
        self,
        root: Path,
        *,
        partition_walk: bool = True,
        version: str = "1",
        model: str = "pi4",
        eeprom: int = EEPROM_2025_08_13,
        flash: bool = True,
    ) -> None:
        """A board under ``root``, its card freshly flashed with ``version`` in slot a and
        powered on; ``flash=False`` attaches to a board already there (another process)."""
        self.root = root
        self.partition_walk = partition_walk
        self.model = model
        self.eeprom = eeprom
        self.disk = root / "disk.img"
        self.register = root / "reset-register"
        self.autoboot = FatAutoboot(self.disk)
        self.booted: int | None = None
        if not flash:
            return
        for sub in ("state", "dt/chosen/bootloader"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.disk.write_bytes(pristine_disk(version))
        self.register.write_bytes(b"0")
        self.boot()

    # --- the card ----------------------------------------------------------------------

    def partitions(self) -> dict[int, Partition]:
        """The card's partition table."""
        return read_partitions(self.disk)

    def region(self, kind: str, slot: str) -> Region:
        """A slot's boot or root partition as a byte range of the card."""
        number = self.ROOTS[slot] if kind == "root" else 2 + "ab".index(slot)
        part = self.partitions()[number]
        return Region(self.disk, part.offset, part.size)

    def write_at(self, kind: str, slot: str, data: bytes, at: int = 0) -> None:
        """Change bytes of a partition behind everyone's back (a bad card, a test)."""
        region = self.region(kind, slot)
        with open(self.disk, "r+b") as handle:
            handle.seek(region.offset + at)
            handle.write(data)

    def slot_content(self, slot: str) -> tuple[bytes, bytes]:
        """What a slot's partitions hold (boot, root), whole."""
        out = []
        with open(self.disk, "rb") as handle:
            for kind in ("boot", "root"):
                region = self.region(kind, slot)
                handle.seek(region.offset)
                out.append(handle.read(region.size or 0))
        return out[0], out[1]

    def holds(self, slot: str, version: str) -> bool:
        """True when the slot holds exactly ``version``'s boot and root images."""
        boot, root = self.slot_content(slot)
        want_boot, want_root = boot_image(version), root_image(version)
        return boot[: len(want_boot)] == want_boot and root[: len(want_root)] == want_root

    def read_autoboot(self) -> bytes | None:
        """``autoboot.txt`` as it is on partition 1 (None: missing)."""
        return self.autoboot.read()

    def layout(self) -> TrybootLayout:
        """The back-end's view of this board."""
        return TrybootLayout(
            state_file=self.root / "state" / "tryboot.json",
            autoboot=self.autoboot,
            device_tree=self.root / "dt",
            boot_devices=(self.region("boot", "a"), self.region("boot", "b")),
            root_devices=(self.region("root", "a"), self.region("root", "b")),
            boot_id=self.root / "boot_id",
        )

    # --- the firmware ------------------------------------------------------------------

    def arm(self, on: bool) -> None:
        """The mailbox: set or clear the one-shot flag."""
        self.register.write_bytes(b"1" if on else b"0")

    def flag(self) -> bool:
        """The flag as the firmware would read it."""
        return self.register.read_bytes() == b"1"

    def bootable(self, number: int, parts: dict[int, Partition] | None = None) -> bool:
        """A FAT partition holding the firmware the bootloader starts."""
        part = (parts if parts is not None else self.partitions()).get(number)
        files = None if part is None else fat_files(self.disk, part)
        if files is None:
            return False
        return "config.txt" in files if self.model == "pi5" else "start4.elf" in files

    def boot(self) -> int | None:
        """Power on: read and clear the flag, choose a partition, write the device tree.
        Returns the booted partition (None: the board does not boot)."""
        tryboot = self.flag()
        self.register.write_bytes(b"0")
        parts = self.partitions()
        text = fat_files(self.disk, parts[1]) if 1 in parts else None
        wanted = firmware_choice(None if text is None else text.get("autoboot.txt"), tryboot)
        if wanted == 0 or not self.bootable(wanted, parts):
            tryboot = False
            if self.partition_walk:
                walk = [n for n in range(1, 9) if self.bootable(n, parts)]
                wanted = walk[0] if walk else 0
            else:
                wanted = 1 if self.bootable(1, parts) else 0
        self.booted = wanted or None
        base = self.root / "dt" / "chosen" / "bootloader"
        base.joinpath("partition").write_bytes(struct.pack(">I", wanted))
        base.joinpath("tryboot").write_bytes(struct.pack(">I", int(tryboot)))
        base.joinpath("build_timestamp").write_bytes(struct.pack(">I", self.eeprom))
        (self.root / "dt" / "model").write_bytes(MODELS[self.model].encode() + b"\0")
        (self.root / "boot_id").write_text(str(uuid.uuid4()))
        return self.booted


def build_image_bundle(out: Path, version: str, **manifest: Any) -> Path:
    """A bundle whose payload is ``rootfs.img`` + ``boot.img`` for ``version`` (the
    example ``good-1.2.0``'s manifest otherwise, release counter 3, for Pi 4 / CM4 / Pi 5
    with an EEPROM from 2023-05-11 on, no simulated outcome unless ``manifest`` sets one);
    returns the bundle file."""
    from firmware_bundles.build import build_bundle
    from firmware_bundles.examples import example_source

    src = out / f"src-{version}"
    (src / "payload").mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    fields = json.loads((example_source("good-1.2.0") / "manifest.json").read_text())
    fields.pop("simulation", None)
    fields.update(version=version, release_counter=3, description="Raspberry Pi image")
    fields["raspberry_pi"] = {"models": ["pi4", "cm4", "pi5"], "min_eeprom": "2023-05-11"}
    fields.update(manifest)
    (src / "manifest.json").write_text(json.dumps(fields))
    (src / "payload" / ROOTFS_IMAGE).write_bytes(root_image(version))
    (src / "payload" / BOOT_IMAGE).write_bytes(boot_image(version))
    return build_bundle(src, out).path
