"""The shipped deployment files: the systemd unit and the example configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / "fleet-agent.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_is_a_watched_hardened_notify_service() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert int(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["always"]
    assert s["StartLimitIntervalSec"] == ["0"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["User"] == ["edgefleet"]
    assert s["StateDirectory"] == ["edgefleet"]
    assert "fleet-agent run --config /etc/edgefleet/agent.toml" in s["ExecStart"][0]


def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (DEPLOY / "fleet-agent.service").read_text()
    unit = tmp_path / "fleet-agent.service"
    unit.write_text(
        text.replace("/opt/edgefleet/bin/fleet-agent", shutil.which("true") or "/bin/true")
    )
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "fleet-agent.service" not in result.stderr, result.stderr


def test_example_config_is_valid(tmp_path: Path) -> None:
    text = (DEPLOY / "agent.toml.example").read_text()
    for name in ("ca.pem", "device.pem", "device.key"):
        (tmp_path / name).write_text("x")
        text = text.replace(f"/etc/edgefleet/{name}", str(tmp_path / name))
    path = tmp_path / "agent.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.device_id == "pi-0042"
    assert config.broker_tls
