"""``fleetctl devices unquarantine`` against a live API server, and the agent's own
``fleet-agent unquarantine`` on a stopped agent's state dir (real processes)."""

from __future__ import annotations

import json
from pathlib import Path

from agent.core.update_flow import UpdateRecord
from agent.update_ports import FileUpdateStore
from agent.updater import UPDATE_FILE
from fleet_server.fleetctl.client import EXIT_NOT_FOUND
from tests.integration.server.test_clis import live, run  # noqa: F401  (fixture)


def test_fleetctl_unquarantine_clears_the_servers_view_and_is_audited(
    live,  # noqa: F811
    tmp_path: Path,
) -> None:
    server, tokens = live
    home = tmp_path / "home"
    (home / ".config/edgefleet").mkdir(parents=True)
    (home / ".config/edgefleet/fleetctl.toml").write_text(
        f'url = "{server.url}"\ntoken = "{tokens["operator"]}"\n'
    )
    env = {"HOME": str(home)}
    csv = tmp_path / "factory.csv"
    csv.write_text("device_id,serial,model\npi-q1,SNQ1,thermo-1\n")
    assert run(["fleetctl", "devices", "import", str(csv)], env).returncode == 0
    done = run(["fleetctl", "devices", "unquarantine", "pi-q1", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["quarantine_cleared_at"] is not None
    plain = run(["fleetctl", "devices", "unquarantine", "pi-q1"], env)
    assert plain.stdout.strip() == "pi-q1 unquarantined"
    audit = run(["fleetctl", "--token", tokens["technician"], "audit", "list", "--json"], env)
    assert json.loads(audit.stdout)["items"][0]["action"] == "device.unquarantine"
    missing = run(["fleetctl", "devices", "unquarantine", "pi-nope"], env)
    assert missing.returncode == EXIT_NOT_FOUND
    assert "Traceback" not in missing.stderr


def test_fleet_agent_unquarantine_clears_the_local_list(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = FileUpdateStore(state / UPDATE_FILE)
    record = UpdateRecord().to_dict()
    store.save({"record": record, "quarantine": ["2.0.0", "2.1.0"], "work": {}})
    one = run(["fleet-agent", "unquarantine", "--state-dir", str(state), "2.0.0"])
    assert one.returncode == 0, one.stderr
    assert "cleared: 2.0.0; still quarantined: 2.1.0" in one.stdout
    assert store.load()["quarantine"] == ["2.1.0"]
    rest = run(["fleet-agent", "unquarantine", "--state-dir", str(state)])
    assert "cleared: 2.1.0" in rest.stdout
    loaded = store.load()
    assert loaded is not None
    assert loaded["quarantine"] == []
    assert loaded["record"] == record
