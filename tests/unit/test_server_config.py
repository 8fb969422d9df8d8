"""Server configuration: TOML + FLEET_* overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_server.config import ConfigError, load_settings


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./fleet-server.toml here
    s = load_settings(None, env={})
    assert s.database.url == "sqlite:///./var/fleet.db"
    assert s.mqtt.url is None
    assert s.ingest.auto_register is False


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text('[database]\nurl = "sqlite:///x.db"\n[ingest]\nbatch_size = 100\n')
    s = load_settings(
        cfg,
        env={"FLEET_INGEST_BATCH_SIZE": "250", "FLEET_MQTT_URL": "mqtt://broker:1883"},
    )
    assert s.database.url == "sqlite:///x.db"
    assert s.ingest.batch_size == 250
    assert s.mqtt.url == "mqtt://broker:1883"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[ingest]\nbatch_size = 0\n", {}, "ingest.batch_size"),
        ("[ingest]\nbatchsize = 10\n", {}, "ingest.batchsize"),
        ("[nonsense]\na = 1\n", {}, "nonsense"),
        ("", {"FLEET_DATABASE_URL": "mysql://x"}, "database.url"),
        ("", {"FLEET_MQTT_URL": "http://x"}, "mqtt.url"),
        ("", {"FLEET_INGEST_AUTO_REGISTER": "maybe"}, "ingest.auto_register"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env=env)
    assert info.value.key == key
    assert key in str(info.value)


def test_broken_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[database\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", env={})
