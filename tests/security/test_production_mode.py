"""Production mode refuses insecure settings, naming each; demo mode warns loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server.api import create_app
from fleet_server.config import load_settings
from fleet_server.security_mode import production_problems
from fleet_server.updates.bootstrap import ensure_repository
from fleet_server.updates.keys import create_root_keys

BIN = Path(sys.executable).parent


def _offline_root_repository(d: Path, count: int = 3, threshold: int = 2) -> None:
    """A TUF repository in ``d/tuf`` whose root keys live in ``d/offline-root``."""
    create_root_keys(d / "offline-root", count, threshold)
    ensure_repository(d / "tuf", d / "tuf-keys", [d / "offline-root"])


def _secure_toml(d: Path, *, repository: bool = True) -> str:
    """A production configuration whose every file exists under ``d``, with a TUF
    repository signed by a 2-of-3 offline root (unless ``repository`` is false)."""
    if repository:
        _offline_root_repository(d)
    for name in (
        "api.crt",
        "api.key",
        "ca/ca-chain.pem",
        "ca/crl.pem",
        "ingest.crt",
        "ingest.key",
        "cmd.crt",
        "cmd.key",
    ):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("x")
    return f"""
[security]
mode = "production"
ca_dir = "{d}/ca"
[mqtt]
url = "mqtts://broker.example:8883"
[api]
base_url = "https://fleet.example"
[tls]
api_cert = "{d}/api.crt"
api_key = "{d}/api.key"
mqtt_ca = "{d}/ca/ca-chain.pem"
mqtt_cert = "{d}/ingest.crt"
mqtt_key = "{d}/ingest.key"
command_cert = "{d}/cmd.crt"
command_key = "{d}/cmd.key"
[updates]
repo_dir = "{d}/tuf"
keys_dir = "{d}/tuf-keys"
"""


def test_a_complete_production_configuration_passes(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(_secure_toml(tmp_path))
    settings = load_settings(cfg, env={})
    assert settings.security.mode == "production"
    assert production_problems(settings) == []


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"FLEET_TLS_API_CERT": ""}, "tls.api_cert"),
        ({"FLEET_TLS_API_KEY": "/nonexistent/api.key"}, "tls.api_key"),
        ({"FLEET_MQTT_URL": ""}, "mqtt.url"),  # embedded broker
        ({"FLEET_MQTT_URL": "mqtt://broker.example:1883"}, "mqtt.url"),
        ({"FLEET_TLS_MQTT_CERT": ""}, "tls.mqtt_cert"),
        ({"FLEET_TLS_MQTT_CA": ""}, "tls.mqtt_ca"),
        ({"FLEET_INGEST_AUTO_REGISTER": "true"}, "ingest.auto_register"),
        ({"FLEET_API_BASE_URL": "http://fleet.example"}, "api.base_url"),
        ({"FLEET_SECURITY_CA_DIR": ""}, "security.ca_dir"),
    ],
)
def test_each_insecure_setting_is_named(tmp_path: Path, env: dict[str, str], key: str) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(_secure_toml(tmp_path))
    settings = load_settings(cfg, env=env)
    assert [p.key for p in production_problems(settings)] == [key]


def test_missing_crl_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(_secure_toml(tmp_path))
    (tmp_path / "ca/crl.pem").unlink()
    problems = production_problems(load_settings(cfg, env={}))
    assert [p.key for p in problems] == ["security.ca_dir"]
    assert "crl.pem" in problems[0].message


def test_a_config_file_means_production_unless_it_says_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text('[database]\nurl = "sqlite:///x.db"\n')
    assert load_settings(cfg, env={}).security.mode == "production"
    cfg.write_text("# nothing configured yet\n")
    assert load_settings(cfg, env={}).security.mode == "production"
    cfg.write_text('[security]\nmode = "demo"\n')
    assert load_settings(cfg, env={}).security.mode == "demo"
    monkeypatch.chdir(tmp_path / "..")
    assert load_settings(None, env={}).security.mode == "demo"  # zero setup, no file


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full.update(env)
    return subprocess.run(
        [str(BIN / "fleet-server"), *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["run", "api", "ingest"])
def test_server_refuses_to_start_insecure_in_production(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(
        f'[security]\nmode = "production"\n[database]\nurl = "sqlite:///{tmp_path}/f.db"\n'
    )
    out = _run([command, "--config", str(cfg)], {}, tmp_path)
    assert out.returncode == 2, out.stderr
    for key in ("tls.api_cert", "mqtt.url", "tls.mqtt_cert", "api.base_url", "security.ca_dir"):
        assert key in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "f.db").exists()  # refused before touching anything


def test_demo_mode_says_it_is_insecure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(None, env={"FLEET_DATABASE_URL": f"sqlite:///{tmp_path}/f.db"})
    assert settings.security.mode == "demo"
    with TestClient(create_app(settings)) as client:
        body = client.get("/healthz").json()
    assert body["mode"] == "demo"
    assert "INSECURE DEMO MODE" in body["warning"]
    # And at start: run/api/ingest print the banner before anything else.
    from fleet_server.cli import _secure_start

    _secure_start(settings)
    assert "INSECURE DEMO MODE" in capsys.readouterr().err


def test_init_demo_makes_demo_mode_explicit(tmp_path: Path) -> None:
    out = _run(["init", "--demo", "--json"], {}, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "INSECURE DEMO MODE" in out.stderr
    settings = load_settings(tmp_path / "fleet-server.toml", env={})
    assert settings.security.mode == "demo"
    again = _run(["init", "--demo"], {}, tmp_path)
    assert again.returncode == 2
    assert "exists" in again.stderr


# --- the TUF root (issue 13, finding 5) ---------------------------------------------------


def _root_problems(tmp_path: Path) -> list[str]:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(_secure_toml(tmp_path, repository=False))
    return [str(p) for p in production_problems(load_settings(cfg, env={}))]


def test_production_refuses_a_missing_or_development_tuf_root(tmp_path: Path) -> None:
    missing = _root_problems(tmp_path)
    assert len(missing) == 1
    assert missing[0].startswith("updates.repo_dir:")
    assert "fleet-server keys create-root" in missing[0]
    ensure_repository(tmp_path / "tuf", tmp_path / "tuf-keys")  # what `init` made before
    dev = _root_problems(tmp_path)
    assert len(dev) == 2, dev
    assert "needs 1 signature(s), production needs at least 2" in dev[0]
    assert "stored online" in dev[1]
    assert all("fleet-server keys rotate-root" in p for p in dev)


def test_production_refuses_a_one_of_one_offline_root(tmp_path: Path) -> None:
    _offline_root_repository(tmp_path, count=1, threshold=1)
    problems = _root_problems(tmp_path)
    assert len(problems) == 1, problems
    assert "needs 1 signature(s)" in problems[0]


def test_production_refuses_a_root_key_kept_with_the_online_keys(tmp_path: Path) -> None:
    _offline_root_repository(tmp_path)
    pem = next((tmp_path / "offline-root").glob("*.pem"))
    (tmp_path / "tuf-keys" / pem.name).write_bytes(pem.read_bytes())
    problems = _root_problems(tmp_path)
    assert len(problems) == 1, problems
    assert "stored online" in problems[0]


def test_production_refuses_a_root_key_that_signs_an_online_role(tmp_path: Path) -> None:
    from tuf.api.metadata import Metadata, Root

    _offline_root_repository(tmp_path)
    root = Metadata[Root].from_file(str(tmp_path / "tuf/metadata/root.json")).signed
    root.roles["timestamp"].keyids.append(root.roles["root"].keyids[0])
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(_secure_toml(tmp_path, repository=False))
    problems = production_problems(load_settings(cfg, env={}), read_root=lambda _p: root)
    assert [p.key for p in problems] == ["updates.repo_dir"]
    assert "also signs an online role" in problems[0].message


def test_run_refuses_a_development_root_and_init_will_not_make_one(tmp_path: Path) -> None:
    cfg = tmp_path / "fleet-server.toml"
    cfg.write_text(
        _secure_toml(tmp_path, repository=False)
        + f'[database]\nurl = "sqlite:///{tmp_path}/f.db"\n'
    )
    init = _run(["init", "--json", "--config", str(cfg)], {}, tmp_path)
    assert init.returncode == 2, init.stderr
    assert "fleet-server keys create-root" in init.stderr
    assert not (tmp_path / "tuf").exists()
    assert not (tmp_path / "f.db").exists()
    ensure_repository(tmp_path / "tuf", tmp_path / "tuf-keys")  # a development root
    run = _run(["run", "--config", str(cfg)], {}, tmp_path)
    assert run.returncode == 2, run.stderr
    assert "updates.repo_dir" in run.stderr
    assert "keys create-root" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "f.db").exists()
    # with a 2-of-3 offline root, init creates the repository and its admin token
    (tmp_path / "tuf").rename(tmp_path / "dev-tuf")
    create_root_keys(tmp_path / "offline-root", 3, 2)
    keys = ["--root-keys", str(tmp_path / "offline-root")]
    init = _run(["init", "--json", "--config", str(cfg), *keys], {}, tmp_path)
    assert init.returncode == 0, init.stderr
    assert '"tuf_setup": "created"' in init.stdout


# --- demo mode binds to loopback and says what local clients can do (finding 6) --------


def test_demo_mode_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    env = {"FLEET_DATABASE_URL": f"sqlite:///{tmp_path}/f.db", "FLEET_API_HOST": "0.0.0.0"}
    for command in ("run", "api"):
        out = _run([command], env, tmp_path)
        assert out.returncode == 2, out.stderr
        assert "api.host: 0.0.0.0 is not a loopback address" in out.stderr
        assert "Traceback" not in out.stderr
    env = {"FLEET_DATABASE_URL": f"sqlite:///{tmp_path}/f.db", "FLEET_MQTT_URL": "mqtt://10.1.2.3"}
    out = _run(["ingest"], env, tmp_path)
    assert out.returncode == 2, out.stderr
    assert "mqtt.url: mqtt://10.1.2.3 is not on a loopback address" in out.stderr
    assert not (tmp_path / "f.db").exists()


def test_demo_start_says_what_any_local_client_can_do(tmp_path: Path) -> None:
    from tests.conftest import free_port, wait_for

    broker_port, api_port = free_port(), free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full.update(
        FLEET_DATABASE_URL=f"sqlite:///{tmp_path}/f.db",
        FLEET_API_PORT=str(api_port),
        FLEET_MQTT_EMBEDDED_PORT=str(broker_port),
    )
    err = tmp_path / "run.err"
    with err.open("w") as sink:
        proc = subprocess.Popen(
            [str(BIN / "fleet-server"), "run"], cwd=tmp_path, env=full, stderr=sink
        )
    try:
        wait_for(lambda: "Demo mode therefore listens" in err.read_text(), timeout=90)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    text = " ".join(line.strip("* ") for line in err.read_text().splitlines())
    assert f"embedded MQTT broker at 127.0.0.1:{broker_port} without credentials" in text
    assert "publish as any device" in text
    assert "send commands to any device" in text
    assert "take over the ingest's session (client id fleet-ingest)" in text
