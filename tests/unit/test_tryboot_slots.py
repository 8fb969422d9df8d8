"""TrybootSlots over a fake Pi: device tree, autoboot.txt, raw writes, and a power cut
after every single persistent write of an update and of a rollback."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.adapters.slots import SlotError
from agent.adapters.tryboot import BOOT_IMAGE, ROOTFS_IMAGE, TrybootSlots
from agent.adapters.tryboot_io import (
    Autoboot,
    Persist,
    TrybootError,
    Watchdog,
    parse_autoboot,
    read_boot_info,
    render_autoboot,
)
from simulator.fake_pi import FakePi, boot_image, root_image


class PowerCut(Exception):  # noqa: N818 (a simulated event)
    """The power went away right after a persistent write."""


def cut_after(limit: int | None, log: list[str]) -> Callable[[str], None]:
    """An ``after_write`` hook recording each write and cutting after the ``limit``-th."""

    def hook(label: str) -> None:
        log.append(label)
        if limit is not None and len(log) > limit:
            raise PowerCut(label)

    return hook


def bundle(tmp: Path, version: str) -> Path:
    source = tmp / f"payload-{version}"
    source.mkdir()
    (source / BOOT_IMAGE).write_bytes(boot_image(version))
    (source / ROOTFS_IMAGE).write_bytes(root_image(version))
    return source


CHUNK = 1 << 17
"""Raw writes of 128 KiB: each slot image takes several, each one a cut position."""


def slots_on(pi: FakePi, hook: Callable[[str], None] | None = None) -> TrybootSlots:
    return TrybootSlots(
        pi.layout(), arm=pi.arm, persist=Persist(hook, CHUNK, sync=False), initial_version="1"
    )


def holds(pi: FakePi, slot: str, version: str) -> bool:
    return pi.holds(slot, version)


# --- device tree and autoboot.txt --------------------------------------------------------


def test_device_tree_is_big_endian_and_partition_zero_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "chosen" / "bootloader"
    base.mkdir(parents=True)
    base.joinpath("partition").write_bytes(struct.pack(">I", 3))
    base.joinpath("tryboot").write_bytes(struct.pack(">I", 1))
    info = read_boot_info(tmp_path)
    assert (info.partition, info.tryboot) == (3, True)
    base.joinpath("partition").write_bytes(struct.pack(">I", 0))
    with pytest.raises(TrybootError, match="EEPROM is too old"):
        read_boot_info(tmp_path)
    base.joinpath("partition").unlink()
    with pytest.raises(TrybootError, match="does not report tryboot state"):
        read_boot_info(tmp_path)


def test_autoboot_rules() -> None:
    text = render_autoboot(Autoboot(2, 3))
    assert parse_autoboot(text) == Autoboot(2, 3)
    assert len(text) == len(render_autoboot(Autoboot(3, 2)))  # a commit keeps the size
    assert parse_autoboot(b"") is None
    assert parse_autoboot(text[:-3]) is None  # torn
    assert parse_autoboot(text.replace(b"tryboot_a_b=1", b"tryboot_a_b=0")) is None
    assert parse_autoboot(text + b"#" * 600) is None  # over 512 bytes


def test_unknown_booted_partition_is_refused(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)
    (tmp_path / "dt/chosen/bootloader/partition").write_bytes(struct.pack(">I", 7))
    with pytest.raises(TrybootError, match="partition 7"):
        slots_on(pi)


# --- the nominal paths --------------------------------------------------------------------


def test_update_trial_commit(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)
    slots = slots_on(pi)
    assert slots.status().running == "a"
    assert not slots.status().in_trial
    slots.install(bundle(tmp_path, "2"), "2")
    assert holds(pi, "b", "2")
    assert holds(pi, "a", "1")
    slots.switch_for_trial()
    assert pi.flag()
    assert pi.boot() == 3
    trial = slots_on(pi)
    status = trial.status()
    assert status.in_trial
    assert status.running == "b"
    assert status.running_version == "2"
    trial.commit()
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(3, 2)
    assert pi.boot() == 3  # a plain reboot stays on the new slot
    after = slots_on(pi).status()
    assert (after.running, after.committed, after.in_trial) == ("b", "b", False)


def test_failed_trial_rolls_back_without_writing_fat(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)
    slots = slots_on(pi)
    slots.install(bundle(tmp_path, "2"), "2")
    slots.switch_for_trial()
    pi.boot()
    before = pi.read_autoboot()
    trial = slots_on(pi)
    trial.rollback()
    assert pi.read_autoboot() == before
    assert trial.status().running == "a"
    assert not trial.status().in_trial
    assert pi.boot() == 2


def test_a_rollback_after_a_commit_is_a_trial_of_the_old_slot(tmp_path: Path) -> None:
    """After a commit of b, the fleet sends the old image back (re-released as 1.0.1):
    slot a holds it already, so nothing is written; its trial boots and commits."""
    pi = FakePi(tmp_path)
    slots_on(pi).install(bundle(tmp_path, "2"), "2")
    slots_on(pi).switch_for_trial()
    pi.boot()
    slots_on(pi).commit()
    assert pi.boot() == 3
    writes: list[str] = []
    back = slots_on(pi, cut_after(None, writes))
    back.install(bundle(tmp_path, "1"), "1.0.1")
    assert not [w for w in writes if w.startswith("raw:")], writes
    back.switch_for_trial()
    assert pi.boot() == 2  # the trial of the old slot
    trial = slots_on(pi)
    assert trial.status().in_trial
    assert trial.status().running_version == "1.0.1"
    trial.commit()
    assert pi.boot() == 2
    assert parse_autoboot(pi.read_autoboot()) == Autoboot(2, 3)
    assert holds(pi, "a", "1")


def test_install_refuses_a_payload_without_an_image(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)
    with pytest.raises(SlotError, match=ROOTFS_IMAGE):
        slots_on(pi).install(tmp_path, "2")
    assert holds(pi, "a", "1")


def test_read_back_mismatch_is_refused_and_leaves_the_slot_unclaimed(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)

    def bad_card(label: str) -> None:
        if label.startswith("raw:root"):  # the card silently corrupts a byte
            pi.write_at("root", "b", b"\xff", 100)

    slots = slots_on(pi, bad_card)
    with pytest.raises(TrybootError, match="read-back digest"):
        slots.install(bundle(tmp_path, "2"), "2")
    assert slots.status().inactive == "b"
    assert slots.status().running_version == "1"
    with pytest.raises(SlotError, match="no installed version"):
        slots.switch_for_trial()
    assert slots_on(pi).status().committed_version == "1"


def test_watchdog_is_armed_during_the_trial_and_released_on_commit(tmp_path: Path) -> None:
    pi = FakePi(tmp_path)
    slots_on(pi).install(bundle(tmp_path, "2"), "2")
    slots_on(pi).switch_for_trial()
    pi.boot()
    device = tmp_path / "watchdog"
    dog = Watchdog(device)
    trial = TrybootSlots(pi.layout(), arm=pi.arm, watchdog=dog, initial_version="1")
    assert dog.armed
    again = Watchdog(device)  # the agent restarts within the trial: armed again
    TrybootSlots(pi.layout(), arm=pi.arm, watchdog=again, initial_version="1")
    assert again.armed
    again.disarm()
    trial.status()
    trial.commit()
    assert not dog.armed
    assert device.read_bytes().endswith(b"V")  # the magic close stops the timer


# --- torn autoboot.txt ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_torn_autoboot_is_repaired_from_state(tmp_path: Path, damage: str) -> None:
    pi = FakePi(tmp_path)
    slots_on(pi).install(bundle(tmp_path, "2"), "2")
    slots_on(pi).switch_for_trial()
    pi.boot()
    slots_on(pi).commit()  # committed: b
    good = pi.read_autoboot()
    assert good is not None
    if damage == "missing":
        pi.autoboot.write_raw(None)
    elif damage == "empty":
        pi.autoboot.write_raw(b"")
    else:
        pi.autoboot.write_raw(good[: len(good) // 2])
    assert pi.boot() == 2  # PARTITION_WALK: the first bootable partition
    repaired = slots_on(pi)
    assert pi.read_autoboot() == good
    assert repaired.status().committed == "b"
    assert pi.boot() == 3


# --- the power-cut matrix ----------------------------------------------------------------


Factory = Callable[..., TrybootSlots]


def run_update(
    pi: FakePi,
    tmp: Path,
    hook: Callable[[str], None],
    *,
    healthy: bool,
    make: Factory = slots_on,
) -> None:
    """The agent's update as the driver runs it, with the health check's verdict; every
    persistent write goes through ``hook``. Records in ``pi.health_passed`` whether a
    commit was decided after a passing check."""
    source = tmp / "payload-2"
    slots = make(pi, hook)
    slots.install(source, "2")
    slots.switch_for_trial()
    pi.boot()
    trial = make(pi, hook)
    if healthy:
        pi.health_passed = True  # type: ignore[attr-defined]
        trial.commit()
    else:
        trial.rollback()
    pi.boot()
    make(pi, hook)


def converge(pi: FakePi, tmp: Path, *, healthy: bool, make: Factory) -> TrybootSlots:
    """After a cut and a power-on: the agent goes on until the update settles."""
    slots = make(pi)
    status = slots.status()
    if status.in_trial and status.running_version == "2":
        if healthy:
            pi.health_passed = True  # type: ignore[attr-defined]
            slots.commit()
        else:
            slots.rollback()
    elif status.committed_version != "2" and healthy:
        run_update(pi, tmp, cut_after(None, []), healthy=True, make=make)
    elif not healthy and status.committed_version == "2":
        raise AssertionError("a failing update was committed")
    pi.boot()
    return make(pi)


def check_board(pi: FakePi) -> None:
    """The board came up on a complete old or new slot, never on an untested new one."""
    assert pi.booted is not None, "the board does not boot"
    slot = FakePi.PARTITIONS[pi.booted]
    assert holds(pi, slot, "1") or holds(pi, slot, "2"), f"slot {slot} is half written"
    tryboot = (pi.root / "dt/chosen/bootloader/tryboot").read_bytes() == struct.pack(">I", 1)
    if holds(pi, slot, "2") and not holds(pi, slot, "1") and not tryboot:
        assert getattr(pi, "health_passed", False), "the new slot boots untested"


def power_cut_matrix(
    tmp: Path, *, healthy: bool, slots_class: type[TrybootSlots] = TrybootSlots
) -> int:
    """Cut the power after every write in turn; returns how many writes an update makes."""

    def make(pi: FakePi, hook: Callable[[str], None] | None = None) -> TrybootSlots:
        return slots_class(
            pi.layout(), arm=pi.arm, persist=Persist(hook, CHUNK, sync=False), initial_version="1"
        )

    nominal: list[str] = []
    board = tmp / "nominal"
    board.mkdir()
    pi = FakePi(board / "pi")
    bundle(board, "2")
    run_update(pi, board, cut_after(None, nominal), healthy=healthy, make=make)
    for limit in range(len(nominal)):
        case = tmp / f"cut{limit}"
        case.mkdir()
        pi = FakePi(case / "pi")
        bundle(case, "2")
        with pytest.raises(PowerCut):
            run_update(pi, case, cut_after(limit, []), healthy=healthy, make=make)
        pi.boot()
        try:
            check_board(pi)
        except AssertionError as exc:
            raise AssertionError(f"cut after {nominal[: limit + 1]}: {exc}") from None
        final = converge(pi, case, healthy=healthy, make=make).status()
        check_board(pi)
        want = "2" if healthy else "1"
        assert (final.committed_version, final.running_version) == (want, want), nominal[limit]
        assert not final.in_trial
        assert parse_autoboot(pi.read_autoboot()) is not None
    return len(nominal)


def test_power_cut_after_every_write_of_an_update(tmp_path: Path) -> None:
    writes = power_cut_matrix(tmp_path, healthy=True)
    assert writes >= 8  # state, raw chunks, autoboot tmp + rename, flag


def test_power_cut_after_every_write_of_a_rollback(tmp_path: Path) -> None:
    assert power_cut_matrix(tmp_path, healthy=False) >= 6


def test_the_matrix_catches_a_backend_that_commits_before_the_health_check(
    tmp_path: Path,
) -> None:
    class Eager(TrybootSlots):
        def switch_for_trial(self) -> None:
            target = self.status().inactive
            self._write_autoboot(target, "eager")  # the bug: default = untested slot

    with pytest.raises(AssertionError, match="untested"):
        power_cut_matrix(tmp_path, healthy=True, slots_class=Eager)


# --- configuration -------------------------------------------------------------------------


def test_config_and_make_slots_build_tryboot_slots(tmp_path: Path) -> None:
    from agent.config import ConfigError, parse_updates
    from agent.updater import make_slots

    FakePi(tmp_path / "pi")
    (tmp_path / "bootfs").mkdir()
    devices = [str(tmp_path / name) for name in ("p2", "p3", "p5", "p6")]
    keys = {
        "slots": "tryboot",
        "tryboot_autoboot": str(tmp_path / "bootfs" / "autoboot.txt"),
        "tryboot_device_tree": str(tmp_path / "pi" / "dt"),
        "tryboot_boot_devices": devices[:2],
        "tryboot_root_devices": devices[2:],
        "tryboot_arm": "vcmailbox",
        "initial_version": "1",
    }
    settings = parse_updates(keys, tmp_path / "state")
    assert not settings.tryboot.remount
    assert parse_updates({**keys, "tryboot_remount": True}, tmp_path / "state").tryboot.remount
    assert settings.restart == "reboot"
    assert settings.tryboot.boot_partitions == (2, 3)
    (tmp_path / "state").mkdir()
    slots = make_slots(settings, tmp_path / "state")
    assert isinstance(slots, TrybootSlots)
    assert slots.status().running_version == "1"
    assert (tmp_path / "state" / "tryboot.json").is_file()

    bad = [
        ({"restart": "exit"}, 'restart = "reboot"'),
        ({"tryboot_arm": "magic"}, "tryboot_arm: 'magic' is not one of vcio"),
        ({"tryboot_boot_partitions": [2, 2]}, "must differ"),
        ({"tryboot_boot_partitions": [1, 2]}, "partition 1 holds autoboot.txt"),
        ({"tryboot_root_devices": ["/dev/sda5"]}, "list of two str"),
        ({"tryboot_remount": "yes"}, "tryboot_remount: expected true or false"),
    ]
    for extra, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_updates({**keys, **extra}, tmp_path / "state")


def test_vcio_arming_sends_set_reboot_flags_and_checks_the_answer(tmp_path: Path) -> None:
    from agent.adapters.tryboot_io import SET_REBOOT_FLAGS, vcio_arm

    device = tmp_path / "vcio"
    device.write_bytes(b"")
    sent: list[tuple[int, ...]] = []

    def firmware(fd: int, request: int, buffer: bytearray, mutate: bool) -> int:
        assert request & 0xFFFF == 0x6400  # _IOWR(100, 0, char *)
        sent.append(struct.unpack("<7I", buffer))
        struct.pack_into("<I", buffer, 4, 0x80000000 if answer_ok else 0x80000001)
        return 0

    answer_ok = True
    vcio_arm(device, firmware)(True)
    vcio_arm(device, firmware)(False)
    assert [words[2] for words in sent] == [SET_REBOOT_FLAGS] * 2
    assert [words[5] for words in sent] == [1, 0]
    answer_ok = False
    with pytest.raises(TrybootError, match="refused SET_REBOOT_FLAGS"):
        vcio_arm(device, firmware)(True)


def test_command_arming_reports_a_failing_command() -> None:
    from agent.adapters.tryboot_io import command_arm

    command_arm(["true"], None)(True)
    command_arm(["true"], None)(False)  # clearing without a command is a no-op
    with pytest.raises(TrybootError, match="false failed"):
        command_arm(["false"], None)(True)


def test_autoboot_is_written_between_a_read_write_and_a_read_only_remount(
    tmp_path: Path,
) -> None:
    import dataclasses

    from agent.adapters.tryboot_io import MountedAutoboot

    pi = FakePi(tmp_path / "pi")
    (tmp_path / "bootfs").mkdir()
    calls: list[str] = []

    def remount(writable: bool) -> None:
        calls.append("rw" if writable else "ro")

    autoboot = MountedAutoboot(tmp_path / "bootfs" / "autoboot.txt", remount)
    layout = dataclasses.replace(pi.layout(), autoboot=autoboot)
    TrybootSlots(layout, arm=pi.arm, initial_version="1")  # the missing file is repaired
    assert calls == ["rw", "ro"]
    assert parse_autoboot(autoboot.path.read_bytes()) == Autoboot(2, 3)
    TrybootSlots(layout, arm=pi.arm, initial_version="1")  # nothing to write: no remount
    assert calls == ["rw", "ro"]
