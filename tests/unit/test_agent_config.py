"""Agent configuration: valid files load, bad ones give one clear error naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config, parse_config

BASE = {"device_id": "pi-1", "broker": "mqtt://127.0.0.1:1883"}


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = parse_config(BASE)
    assert (config.broker_host, config.broker_port, config.broker_tls) == ("127.0.0.1", 1883, False)
    assert config.keepalive_s == 30
    assert config.sample_interval_s == 10
    assert config.publish_interval_s == 60
    assert config.state_dir == Path("/var/lib/edgefleet")
    assert config.buffer_max_bytes == 50 * 1024 * 1024
    assert config.buffer_max_age_s == 7 * 86400
    assert config.reboot_command == ("systemctl", "reboot")
    assert config.mqtt_version == "auto"
    assert (config.reconnect_min_s, config.reconnect_max_s) == (1.0, 60.0)


@pytest.mark.parametrize(("given", "kept"), [("5", "5"), (5, "5"), ("3.1.1", "3.1.1")])
def test_mqtt_version_choices(given: object, kept: str) -> None:
    assert parse_config({**BASE, "mqtt_version": given}).mqtt_version == kept


def test_full_config_file(tmp_path: Path) -> None:
    for name in ("ca.pem", "dev.pem", "dev.key"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
device_id = "pi-0042"
broker = "mqtts://fleet.example.com"
keepalive = 20
sample_interval_s = 5
publish_interval_s = 30
state_dir = "{tmp_path}/state"
reboot_command = "sudo /sbin/reboot"
log_level = "debug"

[tls]
ca = "{tmp_path}/ca.pem"
cert = "{tmp_path}/dev.pem"
key = "{tmp_path}/dev.key"

[buffer]
max_bytes = 1048576
max_age_s = 86400

[faults.over_temperature]
raise_at = 85
clear_at = 80
"""
    )
    config = load_config(path)
    assert config.broker_port == 8883
    assert config.broker_tls
    assert config.tls.key == tmp_path / "dev.key"
    assert config.reboot_command == ("sudo", "/sbin/reboot")
    assert config.redacted()["tls"]["key"] == "<redacted>"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device_id": "pi/1"}, "device_id: 'pi/1'"),
        ({"broker": "http://x"}, "must start with mqtt:// or mqtts://"),
        ({"broker": "mqtt://user:pw@host"}, "credentials"),
        ({"broker": "mqtt://host:99999"}, "invalid port"),
        ({"sample_intervall_s": 5}, "unknown setting 'sample_intervall_s'"),
        ({"sample_interval_s": "10"}, "sample_interval_s: expected a number"),
        ({"sample_interval_s": 30, "publish_interval_s": 10}, "publish_interval_s"),
        ({"keepalive": 1}, "keepalive: 1 is out of range"),
        ({"buffer": {"max_bytes": 10}}, "buffer.max_bytes"),
        ({"buffer": {"max_size": 10}}, "unknown setting buffer.'max_size'"),
        (
            {"tls": {"ca": "/nonexistent/ca.pem"}},
            "tls.ca: file '/nonexistent/ca.pem' does not exist",
        ),
        ({"log_level": "chatty"}, "log_level"),
        ({"mqtt_version": "3"}, 'mqtt_version: \'3\' is not one of "auto", "5", "3.1.1"'),
        ({"mqtt_version": 3.1}, "mqtt_version: 3.1 is not one of"),
        ({"reconnect_min_s": 0}, "reconnect_min_s: 0 is out of range"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 5}, "reconnect_max_s: 5 must be >="),
        ({"reboot_command": []}, "reboot_command"),
        ({"faults": {"over_temperature": {"raise_at": "hot"}}}, "faults.over_temperature.raise_at"),
    ],
)
def test_bad_values_are_named(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **changes})
    assert message in str(info.value)


def test_missing_required_keys() -> None:
    with pytest.raises(ConfigError, match="broker: required"):
        parse_config({"device_id": "pi-1"})
    with pytest.raises(ConfigError, match="device_id"):
        parse_config({"broker": "mqtt://h"})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("device_id = \n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_refuses_bad_config_with_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "pi-1"\nbroker = "mqtt://h"\nkeepalive = "soon"\n')
    result = run_cli("run", "--config", str(path))
    assert result.returncode == 2
    assert "keepalive: expected a number" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_cli_check_config_and_status_without_a_running_agent(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "pi-1"\nbroker = "mqtt://h"\nstate_dir = "{tmp_path}/state"\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0
    assert "OK" in result.stdout
    result = run_cli("status", "--config", str(path))
    assert result.returncode == 2
    assert "never run here" in result.stderr
