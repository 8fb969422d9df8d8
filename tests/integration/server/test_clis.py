"""The command lines as people run them: ``fleet-server`` bootstrap and ``fleetctl``
against a live API server (real uvicorn on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.api import create_app
from fleet_server.fleetctl.client import (
    EXIT_CONFLICT,
    EXIT_FORBIDDEN,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
)
from tests.server_fixtures import LiveServer, make_tokens, serve, settings_for

BIN = Path(sys.executable).parent


def run(
    cmd: list[str],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        cwd=cwd,
        input=stdin,
    )


def test_fleet_server_init_config_errors_and_tokens(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/var/fleet.db"
    first = run(["fleet-server", "init", "--json"], {"FLEET_DATABASE_URL": db}, tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["admin_token"].startswith("efk_")
    assert json.loads(first.stdout)["console_user"] == "admin"
    assert len(json.loads(first.stdout)["console_password"]) >= 12
    again = run(["fleet-server", "init"], {"FLEET_DATABASE_URL": db}, tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert "Traceback" not in again.stderr
    forced = run(["fleet-server", "init", "--force"], {"FLEET_DATABASE_URL": db}, tmp_path)
    assert forced.returncode == 0
    assert "console user 'admin' password" in forced.stdout
    bad = run(
        ["fleet-server", "migrate"],
        {"FLEET_DATABASE_URL": db, "FLEET_PRESENCE_SWEEP_INTERVAL_S": "-1"},
        tmp_path,
    )
    assert bad.returncode == 2
    assert "presence.sweep_interval_s" in bad.stderr
    assert "FLEET_PRESENCE_SWEEP_INTERVAL_S" in bad.stderr
    tok = run(
        ["fleet-server", "token", "create", "--role", "viewer", "--name", "grafana"],
        {"FLEET_DATABASE_URL": db},
        tmp_path,
    )
    assert tok.returncode == 0
    assert tok.stdout.strip().startswith("efk_")
    jobs = run(["fleet-server", "jobs", "--once", "--json"], {"FLEET_DATABASE_URL": db}, tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    assert json.loads(jobs.stdout)["marked_offline"] == []
    assert json.loads(jobs.stdout)["recall_snapshots"] == 0
    wrong_role = run(
        ["fleet-server", "token", "create", "--role", "root", "--name", "x"],
        {"FLEET_DATABASE_URL": db},
        tmp_path,
    )
    assert wrong_role.returncode == 2
    assert "Traceback" not in wrong_role.stderr


@pytest.fixture
def live(sessions, db_url) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    server = serve(create_app(settings_for(db_url), sessions=sessions))
    yield server, make_tokens(sessions)
    server.stop()


def test_fleetctl_day_to_day(live, tmp_path: Path) -> None:
    server, tokens = live
    home = tmp_path / "home"
    (home / ".config/edgefleet").mkdir(parents=True)
    (home / ".config/edgefleet/fleetctl.toml").write_text(
        f'url = "{server.url}"\ntoken = "{tokens["operator"]}"\n'
    )
    env = {"HOME": str(home)}
    csv = tmp_path / "factory.csv"
    csv.write_text(
        "device_id,serial,model,batch\npi-001,SN1,thermo-1,lot-7\npi-002,SN2,thermo-2,lot-7\n"
    )
    imported = run(["fleetctl", "devices", "import", str(csv)], env)
    assert imported.returncode == 0, imported.stderr
    assert "imported 2" in imported.stdout
    listed = run(["fleetctl", "devices", "list", "--model", "thermo-1", "--json"], env)
    envelope = json.loads(listed.stdout)  # the API's own list answer
    assert (envelope["total"], envelope["next_cursor"]) == (1, None)
    assert [d["device_id"] for d in envelope["items"]] == ["pi-001"]
    table = run(["fleetctl", "devices", "list"], env)
    assert "pi-002" in table.stdout
    shown = run(["fleetctl", "devices", "show", "pi-002"], env)
    assert "SN2" in shown.stdout
    gone = run(["fleetctl", "devices", "decommission", "pi-002", "--yes", "--reason", "rma"], env)
    assert gone.returncode == 0, gone.stderr
    audit = run(["fleetctl", "--token", tokens["technician"], "audit", "list", "--json"], env)
    actions = [e["action"] for e in json.loads(audit.stdout)["items"]]
    assert actions[:2] == ["device.decommission", "device.import"]
    # errors are sentences, not tracebacks
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("device_id,production_date\npi-009,yesterday\n")
    failed = run(["fleetctl", "devices", "import", str(bad_csv)], env)
    assert failed.returncode == EXIT_INVALID
    assert "error [invalid_csv]:" in failed.stderr
    assert "line 2 [production_date]" in failed.stderr
    assert "Traceback" not in failed.stderr
    denied = run(["fleetctl", "--token", tokens["viewer"], "tokens", "list"], env)
    assert denied.returncode == EXIT_FORBIDDEN
    assert "forbidden" in denied.stderr
    missing = run(["fleetctl", "devices", "show", "nope"], env)
    assert "not_found" in missing.stderr
    assert missing.returncode == EXIT_NOT_FOUND
    assert "error [not_found]: device 'nope' is not registered" in missing.stderr
    again = run(["fleetctl", "devices", "decommission", "pi-002", "--yes"], env)
    assert again.returncode == EXIT_CONFLICT
    assert "error [conflict]: device 'pi-002' is already decommissioned" in again.stderr
    created = run(
        [
            "fleetctl",
            "--token",
            tokens["admin"],
            "tokens",
            "create",
            "--name",
            "ci",
            "--role",
            "viewer",
            "--ttl-days",
            "30",
            "--json",
        ],
        env,
    )
    assert json.loads(created.stdout)["secret"].startswith("efk_")
    assert json.loads(created.stdout)["expires_at"] is not None
