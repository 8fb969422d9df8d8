"""The updater's pure parts: the ``[updates]`` config, the install acceptance rule, and the
health-check command resolution."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.adapters.slots import SimulatedSlots
from agent.config import ConfigError, parse_config
from agent.core.update_flow import install_refusal
from agent.updater import Updater, resolve_command
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


def _updater(tmp_path: Path) -> Updater:
    settings = parse_config(_updates(tmp_path, slots="simulated")).updates
    host: Any = SimpleNamespace(server_reachable=lambda: True)  # nothing here reports
    slots = SimulatedSlots()
    return Updater(settings, tmp_path / "state", host, agent_version="1.0.0", slots=slots)


@pytest.mark.parametrize(
    ("state", "reported", "busy"),
    [
        (UpdateState.IDLE, False, False),
        (UpdateState.ROLLED_BACK, True, False),
        (UpdateState.ROLLED_BACK, False, True),  # unsettled, no worker: a reboot is pending
        (UpdateState.COMMITTED, False, True),
        (UpdateState.TRIAL, False, True),
    ],
)
def test_busy_follows_the_record_when_no_worker_runs(
    tmp_path: Path, state: UpdateState, reported: bool, busy: bool
) -> None:
    updater = _updater(tmp_path)
    record = updater.driver.record
    updater.driver.record = replace(record, state=state, reported=reported, version="1.3.0")
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
