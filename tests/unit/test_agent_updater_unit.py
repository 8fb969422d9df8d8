"""The updater's pure parts: the ``[updates]`` config, the install acceptance rule, and the
health-check command resolution."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.adapters.slots import SimulatedSlots
from agent.config import ConfigError, parse_config
from agent.core.outputs import RunCommand
from agent.core.update_flow import install_refusal
from agent.updater import PENDING_FILE, Updater, resolve_command
from protocol import RejectReason, UpdateState
from tests.unit.test_update_driver import _install_cmd

BASE = {"device_id": "pi-1", "broker": "mqtt://127.0.0.1:1883", "state_dir": "/var/lib/x"}


def _updates(tmp_path: Path, **values: Any) -> dict[str, Any]:
    root = tmp_path / "root.json"
    root.write_text("{}")
    table = {
        "enabled": True,
        "server_url": "https://fleet.example.com",
        "root_path": str(root),
        "hardware_revision": "rev-a",
    }
    table.update(values)
    return {**BASE, "updates": table}


def test_updates_are_off_by_default() -> None:
    config = parse_config(BASE)
    assert config.updates.enabled is False


def test_enabled_updates_get_urls_and_defaults(tmp_path: Path) -> None:
    updates = parse_config(_updates(tmp_path)).updates
    assert updates.metadata_url == "https://fleet.example.com/tuf/metadata/"
    assert updates.targets_url == "https://fleet.example.com/tuf/targets/"
    assert updates.slots == "directory"
    assert updates.restart == "exit"
    assert updates.simulate_outcomes is False
    assert updates.max_attempts == 3
    assert updates.slots_dir == Path("/var/lib/x/slots")
    assert updates.download_dir == Path("/var/lib/x/downloads")


def test_simulated_slots_default_to_in_process_restart_and_simulated_outcomes(
    tmp_path: Path,
) -> None:
    updates = parse_config(_updates(tmp_path, slots="simulated")).updates
    assert (updates.restart, updates.simulate_outcomes) == ("none", True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"slots": "nand"}, "updates.slots: 'nand' is not one of directory, simulated"),
        ({"restart": "later"}, "updates.restart"),
        ({"max_attempts": 0}, "updates.max_attempts: 0 is out of range"),
        ({"server_url": "ftp://x"}, "must be an http:// or https:// URL"),
        ({"root_path": "/nonexistent/root.json"}, "does not exist"),
        ({"hardware_revision": None}, "updates.hardware_revision: required"),
        ({"enabled": "yes"}, "updates.enabled: expected true or false"),
        ({"colour": "blue"}, "unknown setting updates.'colour'"),
        ({"payload_mount": "opt/demo"}, "updates.payload_mount: 'opt/demo' must be absolute"),
        ({"slots": "simulated", "restart": "exit"}, 'use restart = "none"'),
    ],
)
def test_bad_updates_table_names_the_key(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    data = _updates(tmp_path, **values)
    data["updates"] = {k: v for k, v in data["updates"].items() if v is not None}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_missing_urls_are_an_error_only_when_enabled(tmp_path: Path) -> None:
    data = _updates(tmp_path)
    del data["updates"]["server_url"]
    with pytest.raises(ConfigError, match="server_url"):
        parse_config(data)
    data["updates"]["enabled"] = False
    assert parse_config(data).updates.enabled is False


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"enabled": False}, RejectReason.UNKNOWN_COMMAND),
        ({"busy": True}, RejectReason.BUSY),
        ({"state": UpdateState.TRIAL}, RejectReason.BUSY),
        ({"state": UpdateState.ROLLED_BACK}, None),
        ({"version": "1.3.0"}, RejectReason.NOT_PERMITTED),
    ],
)
def test_install_acceptance(kwargs: dict[str, Any], expected: RejectReason | None) -> None:
    args: dict[str, Any] = {
        "enabled": True,
        "busy": False,
        "state": UpdateState.IDLE,
        "version": "1.2.0",
        "quarantined": {"1.3.0"},
    }
    args.update(kwargs)
    refusal = install_refusal(**args)
    assert (refusal[0] if refusal else None) is expected


def test_health_command_paths_point_into_the_running_slot(tmp_path: Path) -> None:
    slot = tmp_path / "slot-b"
    assert resolve_command(["/opt/demo/bin/app", "--check"], slot, "/opt/demo") == [
        str(slot / "bin/app"),
        "--check",
    ]
    assert resolve_command(["/usr/bin/true"], slot, "/opt/demo") == ["/usr/bin/true"]
    assert resolve_command(["./bin/app"], slot, None) == ["./bin/app"]


def test_the_idle_agent_does_not_import_tuf() -> None:
    """python-tuf is loaded only when an update runs (the agent's footprint)."""
    code = "import sys, agent.daemon, agent.updater; print('tuf' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


class _Host:
    """Records what the updater reports (the daemon's loop would queue it)."""

    def __init__(self) -> None:
        self.acks: list[tuple[str, bool, str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    def server_reachable(self) -> bool:
        return True

    def emit(self, fields: dict[str, Any]) -> None:
        self.events.append(fields)

    def ack(self, command_id: str, ok: bool, detail: str, result: dict[str, Any]) -> None:
        self.acks.append((command_id, ok, detail, result))


class _Offline:
    """A metadata source that cannot be reached."""

    def refresh(self) -> None:
        raise OSError("mirror unreachable")


def _updater(tmp_path: Path, host: Any = None) -> Updater:
    settings = parse_config(_updates(tmp_path, slots="simulated")).updates
    fetcher: Any = _Offline()
    return Updater(
        settings,
        tmp_path / "state",
        host or _Host(),
        agent_version="1.0.0",
        slots=SimulatedSlots(),
        fetcher=fetcher,
    )


def _ended(updater: Updater, state: UpdateState, command_id: str = "c-0") -> None:
    """The record of an update that ended in ``state``, reported but not wound down."""
    driver = updater.driver
    driver.record = replace(driver.record, state=state, version="1.3.0", execution_id="e-0")
    driver.work = {"command_id": command_id}


def test_an_install_behind_a_pending_restart_is_answered_not_started(tmp_path: Path) -> None:
    """The wind-down asked for the restart that settles it: a command accepted meanwhile
    never overwrites that record; it is answered at once with ``started`` false."""
    host = _Host()
    updater = _updater(tmp_path, host)
    _ended(updater, UpdateState.COMMITTED)
    updater.driver.restart_requested = True
    assert updater.busy
    updater.start_install(RunCommand("install", "c-1", {"target": "t", "version": "1.4.0"}))
    assert updater.wait_idle(10)
    assert host.acks == [("c-1", False, "the last update is not settled yet", {"started": False})]
    assert updater.driver.record.execution_id == "e-0", "the unsettled record is kept"
    assert updater.busy, "busy until the restart"
    assert not updater._starting


def test_a_wind_down_that_raised_is_tried_again_before_the_next_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wind-down that raised (a transient slot error) leaves the outcome unsettled; the
    next command settles it first (the old command's final ack), then runs."""
    host = _Host()
    updater = _updater(tmp_path, host)
    _ended(updater, UpdateState.ROLLED_BACK)
    assert not updater.busy
    updater.start_check(RunCommand("check_update", "c-2"))
    assert updater.wait_idle(10)
    assert [a[0] for a in host.acks] == ["c-0", "c-2"]
    assert host.acks[0][1] is False
    assert "mirror unreachable" in host.acks[1][2]
    assert updater.driver.record.reported
    assert updater.driver.quarantine == ["1.3.0"]


def test_a_pending_command_that_did_start_is_not_answered_again(tmp_path: Path) -> None:
    """Killed after the install's record was saved but before its pending file was
    removed: the next start drops the file and does not answer the command."""
    host = _Host()
    updater = _updater(tmp_path, host)
    _ended(updater, UpdateState.COMMITTED, command_id="c-3")
    updater.driver.record = replace(updater.driver.record, reported=True)
    (tmp_path / "state").mkdir(parents=True, exist_ok=True)
    (tmp_path / "state" / PENDING_FILE).write_text('{"command_id": "c-3"}')
    updater.resume()
    assert updater.wait_idle(10)
    assert host.acks == []
    assert not (tmp_path / "state" / PENDING_FILE).exists()


@pytest.mark.parametrize(
    ("state", "reported", "restart", "busy"),
    [
        (UpdateState.IDLE, False, False, False),
        (UpdateState.ROLLED_BACK, True, False, False),
        (UpdateState.ROLLED_BACK, False, False, False),  # winding down, or to be tried again
        (UpdateState.ROLLED_BACK, False, True, True),  # only the asked-for restart settles it
        (UpdateState.COMMITTED, False, True, True),
        (UpdateState.COMMITTED, True, True, False),
        (UpdateState.TRIAL, False, False, True),
    ],
)
def test_busy_follows_the_record_when_no_worker_runs(
    tmp_path: Path, state: UpdateState, reported: bool, restart: bool, busy: bool
) -> None:
    updater = _updater(tmp_path)
    record = updater.driver.record
    updater.driver.record = replace(record, state=state, reported=reported, version="1.3.0")
    updater.driver.restart_requested = restart
    assert updater.busy is busy
    decision = updater.decide_install(_install_cmd("1.4.0"))
    assert (decision.reason is RejectReason.BUSY) is busy
    assert decision.accepted is not busy


def test_a_version_still_winding_down_from_a_rollback_is_refused_as_quarantined(
    tmp_path: Path,
) -> None:
    """Decided while the rollback of 1.3.0 winds down (reported, not yet quarantined)."""
    updater = _updater(tmp_path)
    record = updater.driver.record
    updater.driver.record = replace(record, state=UpdateState.ROLLED_BACK, version="1.3.0")
    assert updater.driver.quarantine == []
    decision = updater.driver.decide_install(_install_cmd("1.3.0"))
    assert decision.reason is RejectReason.NOT_PERMITTED
    assert "quarantined" in decision.detail
    assert updater.driver.decide_install(_install_cmd("1.4.0")).accepted
