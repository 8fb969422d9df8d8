"""``fleetctl users`` as an admin runs it, against a live API server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.server.test_clis import live, run  # noqa: F401  (fixture)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fleetctl_users(live, tmp_path: Path) -> None:  # noqa: F811
    server, tokens = live
    admin = {"HOME": str(tmp_path), "FLEET_URL": server.url, "FLEET_TOKEN": tokens["admin"]}
    made = run(["fleetctl", "users", "create", "erin", "--role", "operator", "--json"], admin)
    assert made.returncode == 0, made.stderr
    assert len(json.loads(made.stdout)["password"]) >= 12
    changed = run(["fleetctl", "users", "set-role", "erin", "--role", "viewer"], admin)
    assert changed.returncode == 0, changed.stderr
    assert "erin is now viewer" in changed.stdout
    assert run(["fleetctl", "users", "disable", "erin"], admin).returncode == 0
    listed = run(["fleetctl", "users", "list", "--json"], admin)
    erin = next(u for u in json.loads(listed.stdout) if u["username"] == "erin")
    assert erin["role"] == "viewer"
    assert erin["disabled_at"] is not None
    viewer = {**admin, "FLEET_TOKEN": tokens["viewer"]}
    refused = run(["fleetctl", "users", "list"], viewer)
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr
