"""``fleetctl devices telemetry|events|edit|tag`` and ``fleetctl fleet summary`` as people
run them against a live API (issue 14, point 7), and ``--json`` giving the API's own
answer: list commands print the ``{"items", "next_cursor", "total"}`` envelope."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import protocol as p
from fleet_server.fleetctl.cli import app as fleetctl_app
from fleet_server.services.ingest import BatchWriter, Inbound
from tests.integration.server.test_clis import live, run  # noqa: F401  (fixture)


def _env(tmp_path: Path, url: str, token: str) -> dict[str, str]:
    return {"HOME": str(tmp_path), "FLEET_URL": url, "FLEET_TOKEN": token}


class _Ctl:
    """``fleetctl`` in this process (quick); ``stdout``/``stderr``/``returncode`` like
    a finished process. One real process per test checks the installed entry point."""

    def __init__(self, url: str, token: str) -> None:
        self.base = ["--url", url, "--token", token]

    def __call__(self, *args: str) -> Any:
        result = CliRunner().invoke(fleetctl_app, [*self.base, *args])
        result.returncode = result.exit_code
        return result


def _report(sessions, device_id: str) -> None:  # type: ignore[no-untyped-def]
    """One telemetry batch and one boot event, through the ingest's own writer."""
    now = time.time()
    samples = [p.Sample(ts=now - 60, cpu_pct=12.5, temp_c=48.0), p.Sample(ts=now, cpu_pct=20.0)]
    telemetry = p.Telemetry(device_id=device_id, boot_id="b1", seq=1, ts=now, samples=samples)
    boot = p.Boot(
        device_id=device_id,
        boot_id="b1",
        seq=2,
        ts=now,
        reason=5,
        agent_version="0.1.0",
        software_version="1.0.0",
        slot="a",
    )
    inbound = [
        Inbound(p.topic(device_id, p.Kind.TELEMETRY), p.encode(telemetry), now),
        Inbound(p.topic(device_id, p.Kind.EVENT), p.encode(boot), now),
    ]
    assert BatchWriter(sessions).write(inbound).rejected == {}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # rendering, not storage
def test_device_views_edits_and_fleet_summary(live, sessions, tmp_path: Path) -> None:  # noqa: F811
    server, tokens = live
    ops = _env(tmp_path, server.url, tokens["operator"])
    viewer = _env(tmp_path, server.url, tokens["viewer"])
    ctl = _Ctl(server.url, tokens["operator"])
    view = _Ctl(server.url, tokens["viewer"])
    csv = tmp_path / "factory.csv"
    csv.write_text("device_id,model,region,tags\ngw-100,m1,eu,lab\npi-2,m1,us,\n")
    assert ctl("devices", "import", str(csv)).returncode == 0
    _report(sessions, "gw-100")

    # the real process: rendering as a person sees it
    shown = run(
        ["fleetctl", "--columns", "ts,cpu_pct,temp_c", "devices", "telemetry", "gw-100"], ops
    )
    assert shown.returncode == 0, shown.stderr
    assert "gw-100: 2 sample(s)" in shown.stdout
    assert "12.5" in shown.stdout
    assert "48.0" in shown.stdout
    envelope = json.loads(ctl("devices", "telemetry", "gw-100", "--json").stdout)
    assert (envelope["total"], len(envelope["items"])) == (2, 2)
    assert "hourly" in envelope  # the API's answer, not a reshaped list

    events = ctl("devices", "events", "gw-100", "--kind", "boot", "--json")
    assert [e["kind"] for e in json.loads(events.stdout)["items"]] == ["boot"]
    assert "boot" in ctl("devices", "events", "gw-100").stdout

    edited = ctl("devices", "edit", "pi-2", "--owner", "acme", "--clear", "region")
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == "pi-2 updated: owner, region"
    device = json.loads(ctl("devices", "show", "pi-2", "--json").stdout)
    assert (device["owner"], device["region"]) == ("acme", None)
    nothing = run(["fleetctl", "devices", "edit", "pi-2"], ops)
    assert nothing.returncode == 1
    assert "nothing to change" in nothing.stderr

    tagged = ctl("devices", "tag", "gw-100", "beta", "lab")
    assert tagged.stdout.strip() == "gw-100 tags: beta, lab"
    untagged = ctl("devices", "tag", "gw-100", "lab", "--remove")
    assert untagged.stdout.strip() == "gw-100 tags: beta"
    refused = run(["fleetctl", "devices", "tag", "pi-2", "x"], viewer)
    assert refused.returncode == 6  # a viewer may not edit the registry

    summary = view("fleet", "summary")
    assert summary.returncode == 0, summary.stderr
    assert "devices: 2 active, 0 decommissioned" in summary.stdout
    assert json.loads(view("fleet", "summary", "--json").stdout)["devices"] == 2
    audit = json.loads(ctl("audit", "list", "--action", "device.", "--json").stdout)
    assert {"items", "next_cursor", "total"} <= set(audit)
