"""The agent's update state machine, restart table, target checks and slot back-ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.adapters.slots import DirectorySlots, SimulatedSlots, SlotError
from agent.core.update_flow import (
    ACTIVE_STATES,
    RESTART_TABLE,
    CheckFailure,
    IllegalUpdateTransitionError,
    RestartAction,
    TargetInfo,
    UpdateEvent,
    UpdateRecord,
    apply,
    check_target,
    on_restart,
    version_tuple,
)
from protocol import FailureClass, UpdateState

E, U = UpdateEvent, UpdateState


def _run_to(state: UpdateState) -> UpdateRecord:
    path = [E.START, E.DOWNLOADED, E.INSTALL, E.INSTALLED, E.REBOOT, E.BOOTED, E.HEALTHY]
    record = UpdateRecord()
    for i, event in enumerate(path):
        if record.state is state:
            break
        changes = {"execution_id": "ex-1", "version": "1.1.0"} if event is E.START else {}
        record = apply(record, event, float(i), **changes)
    assert record.state is state
    return record


def test_happy_path_reaches_committed_and_keeps_identity() -> None:
    record = _run_to(U.COMMITTED)
    assert record.execution_id == "ex-1"
    assert record.trial_started_at == 5.0


def test_illegal_event_is_rejected() -> None:
    with pytest.raises(IllegalUpdateTransitionError, match="not allowed"):
        apply(UpdateRecord(), E.HEALTHY, 0.0)
    with pytest.raises(IllegalUpdateTransitionError):
        apply(_run_to(U.DOWNLOADING), E.REBOOT, 0.0)


def test_every_state_has_a_restart_action() -> None:
    assert set(RESTART_TABLE) == set(UpdateState)


def test_record_round_trips_through_its_file_form() -> None:
    record = apply(_run_to(U.INSTALLING), E.FAIL, 9.0, failure_class=FailureClass.INSTALL)
    assert UpdateRecord.from_dict(record.to_dict()) == record
    with pytest.raises(ValueError, match="corrupt"):
        UpdateRecord.from_dict({"state": "levitating"})


@pytest.mark.parametrize("state", sorted(ACTIVE_STATES))
def test_killed_in_the_same_state_every_time_ends_terminal(state: UpdateState) -> None:
    record = _run_to(state)
    running = "1.1.0" if state is U.TRIAL else "1.0.0"
    for attempt in range(10):
        record, action = on_restart(record, 100.0 + attempt, running_version=running)
        if record.state not in ACTIVE_STATES:
            break
        assert record.state is state
    assert record.state in (U.FAILED, U.ROLLED_BACK)
    assert "giving up" in record.reason
    if state in (U.REBOOTING, U.TRIAL):
        assert record.state is U.ROLLED_BACK
        assert action is RestartAction.ROLLBACK


def test_restart_after_switch_took_effect_continues_the_trial() -> None:
    record, action = on_restart(_run_to(U.REBOOTING), 50.0, running_version="1.1.0")
    assert record.state is U.TRIAL
    assert action is RestartAction.CONTINUE_TRIAL


def test_bootloader_fallback_during_trial_switches_again_then_is_a_boot_failure() -> None:
    # A one-shot trial cannot tell a crash from a power cut: the first fallbacks try the
    # new slot again; the last attempt rolls back as a boot failure.
    record, action = on_restart(_run_to(U.TRIAL), 50.0, running_version="1.0.0")
    assert record.state is U.REBOOTING
    assert action is RestartAction.SWITCH
    trial = _run_to(U.TRIAL)
    for attempt in range(1, 4):
        record, action = on_restart(trial, 50.0 + attempt, running_version="1.0.0")
        if record.state is U.REBOOTING:
            trial = apply(record, E.BOOTED, 60.0 + attempt)
    assert record.state is U.ROLLED_BACK
    assert record.failure_class is FailureClass.BOOT
    assert action is RestartAction.REPORT


def test_unreported_terminal_outcome_is_reported_after_restart() -> None:
    record = _run_to(U.COMMITTED)
    assert on_restart(record, 9.0, running_version="1.1.0")[1] is RestartAction.REPORT
    done = UpdateRecord(state=U.COMMITTED, reported=True)
    assert on_restart(done, 9.0, running_version="1.1.0")[1] is RestartAction.NONE


TARGET = TargetInfo("1.2.0", ("rev-a", "rev-b"), release_counter=7, min_agent_version="0.1.0")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"hardware_revision": "rev-z"}, CheckFailure.WRONG_HARDWARE),
        ({"highest_release_counter": 8}, CheckFailure.DOWNGRADE),
        ({"agent_version": "0.0.9"}, CheckFailure.AGENT_TOO_OLD),
        ({"quarantined": {"1.2.0"}}, CheckFailure.QUARANTINED),
    ],
)
def test_target_checks(kwargs: dict, expected: CheckFailure | None) -> None:
    args = {
        "hardware_revision": "rev-a",
        "model": None,
        "highest_release_counter": 7,
        "agent_version": "0.1.0",
        **kwargs,
    }
    result = check_target(TARGET, **args)
    assert (result[0] if result else None) is expected


def test_version_tuple_orders_semver_cores() -> None:
    assert version_tuple("1.10.0") > version_tuple("1.9.9")
    assert version_tuple("2.0.0-rc.1+build") == (2, 0, 0)


@pytest.mark.parametrize("kind", ["directory", "simulated"])
def test_slots_trial_commit_and_rollback(kind: str, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "app.bin").write_bytes(b"new")
    slots = (
        DirectorySlots(tmp_path / "slots", initial_version="1.0.0")
        if kind == "directory"
        else SimulatedSlots("1.0.0")
    )

    slots.install(payload, "1.1.0")
    assert slots.status().running_version == "1.0.0", "the running slot is never written"
    slots.switch_for_trial()
    status = slots.status()
    assert status.in_trial
    assert status.running_version == "1.1.0"
    with pytest.raises(SlotError):
        slots.install(payload, "1.2.0")
    slots.rollback()
    assert slots.status().running_version == "1.0.0"
    assert not slots.status().in_trial

    slots.switch_for_trial()
    slots.commit()
    status = slots.status()
    assert status.running_version == status.committed_version == "1.1.0"
    assert not status.in_trial


def test_directory_slots_survive_reopening_and_expose_current(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "app.bin").write_bytes(b"v2")
    slots = DirectorySlots(tmp_path / "slots", initial_version="1.0.0")
    slots.install(payload, "2.0.0")
    slots.switch_for_trial()
    reopened = DirectorySlots(tmp_path / "slots")
    assert reopened.status().running_version == "2.0.0"
    assert reopened.status().in_trial
    assert (tmp_path / "slots" / "current" / "app.bin").read_bytes() == b"v2"
