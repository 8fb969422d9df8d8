"""``fleetctl tickets`` against a live server: open, move, comment, list with the SLA
label, import an event log (all or none), and the status page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet_server.fleetctl.cli import app
from tests.integration.server.test_clis import live  # noqa: F401  (fixture)

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fleetctl_tickets(live) -> None:  # noqa: F811
    server, tokens = live
    runner = CliRunner()

    def run(*args: str, role: str = "operator") -> tuple[int, str, str]:
        env = {"FLEET_URL": server.url, "FLEET_TOKEN": tokens[role]}
        r = runner.invoke(app, ["tickets", *args], env=env)
        # A refusal is raised as CtlError (``main`` prints it); keep its message.
        return r.exit_code, r.stdout, r.stderr or str(r.exception or "")

    code, out, err = run(
        "create",
        "portal login fails",
        "--category",
        "web_mobile_app",
        "--requester",
        "acme",
        "--impact",
        "2",
        "--urgency",
        "1",
        "--json",
    )
    assert code == 0, err
    number = json.loads(out)["number"]
    assert json.loads(out)["priority"] == 2
    assert run("move", number, "in_progress")[0] == 0
    code, _out, err = run("move", number, "closed")
    assert code != 0
    assert "allowed" in err
    assert run("comment", number, "looking into it", "--public")[0] == 0
    code, out, _ = run("list")
    assert number in out
    assert "breaching in" in out or "-" in out
    code, out, _ = run("show", number)
    assert "first_response" in out
    code, _out, err = run("import", "--csv", str(DATA / "servicenow_bad.csv"))
    assert code != 0
    assert "line 3 [made_sla]" in err
    code, out, err = run("import", "--csv", str(DATA / "servicenow_good.csv"))
    assert code == 0, err
    assert "imported 4 ticket(s), 21 event(s), 3 closed" in out
    code, out, _ = run("list", "--state", "pending_customer", "--json")
    assert [t["number"] for t in json.loads(out)] == ["INC0000050"]
    code, out, _ = run("status", "--json", role="viewer")
    assert code == 0
    assert len(json.loads(out)["components"]) == 4
