"""Recall lifecycle end to end through the API, on SQLite and PostgreSQL: scope preview,
frozen and explainable population, devices found later, software remedy through the
rollout hooks, version block, physical remedies, unreachable devices, progress snapshots,
CSV exports, and the audit trail."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy import select, update

from fleet_server.db.models import AuditEntry, Device
from fleet_server.services import recalls
from fleet_server.services.jobs import run_recall_remedy_check, run_recall_snapshots
from tests.conftest import wait_for
from tests.server_fixtures import settings_for


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _device(client: Any, token: str, device_id: str, serial: str, batch: str, **kw: Any) -> None:
    body = {"device_id": device_id, "serial": serial, "model": "thermo-1", "batch": batch, **kw}
    r = client.post("/api/v1/devices", json=body, headers=_h(token))
    assert r.status_code == 201, r.text


def _report(sessions: Any, device_id: str, **values: Any) -> None:
    """What ingest would store when the device reports (version, presence)."""
    with sessions() as s, s.begin():
        s.execute(update(Device).where(Device.device_id == device_id).values(**values))


def test_recall_lifecycle_with_software_remedy_and_version_block(api, sessions, db_url) -> None:
    client, tokens, clock = api
    op, viewer = _h(tokens["operator"]), _h(tokens["viewer"])
    for i in range(1, 6):
        _device(client, tokens["operator"], f"pi-{i}", f"SN{i:03d}", "lot-7" if i <= 4 else "lot-8")
    for i in range(1, 6):
        _report(
            sessions, f"pi-{i}", software_version="2.0.0", presence="online", last_seen=clock.now
        )

    body = {
        "id": "RC-1",
        "title": "Fan controller overheats",
        "scope": {"models": ["thermo-1"], "batches": ["lot-7"], "software_versions": ["2.0.0"]},
        "remedy_version": "2.0.1",
        "blocked_versions": ["2.0.0"],
    }
    assert client.post("/api/v1/recalls", json=body, headers=viewer).status_code == 403
    r = client.post("/api/v1/recalls", json=body, headers=op)
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "draft"
    bad = client.post(
        "/api/v1/recalls", json={**body, "id": "RC-x", "scope": {"colour": ["red"]}}, headers=op
    )
    assert bad.status_code == 422
    assert "unknown clause" in bad.json()["error"]["message"]

    reserved = client.post("/api/v1/recalls", json={**body, "id": "blocked-versions"}, headers=op)
    assert reserved.status_code == 422

    preview = client.get("/api/v1/recalls/RC-1/preview", headers=viewer).json()
    assert [d["device_id"] for d in preview["devices"]] == ["pi-1", "pi-2", "pi-3", "pi-4"]
    with sessions() as s:
        assert not recalls.is_version_blocked(s, "2.0.0")  # drafts block nothing

    opened = client.post("/api/v1/recalls/RC-1/open", headers=op)
    assert opened.status_code == 200, opened.text
    assert opened.json()["completion"]["population"] == 4
    again = client.post("/api/v1/recalls/RC-1/open", headers=op)
    assert again.status_code == 409
    assert again.json()["error"]["details"]["allowed"] == ["closed"]

    # Explainable per device, in or out.
    ex = client.get("/api/v1/recalls/RC-1/devices/pi-2", headers=viewer).json()
    assert ex["in_population"]
    assert ex["state"] == "notified"
    assert "batch lot-7 in [lot-7]" in ex["frozen_reason"]
    out = client.get("/api/v1/recalls/RC-1/devices/pi-5", headers=viewer).json()
    assert not out["in_population"]
    assert out["failed_now"] == ["batch lot-8 not in [lot-7]"]

    # The version block is in force: deployments/rollouts ask these hooks.
    with sessions() as s:
        assert recalls.blocked_versions(s) == {"2.0.0": "RC-1"}
        assert recalls.is_version_blocked(s, "2.0.0")
        held = recalls.recall_holds(s)
        keys = {d.device_id: d.id for d in s.execute(select(Device)).scalars()}
        assert set(held) == {keys[f"pi-{i}"] for i in range(1, 5)}
        assert recalls.recall_held_device_keys(s) == set(held)
        assert set(held.values()) == {"RC-1"}
    blocked = client.get("/api/v1/recalls/blocked-versions", headers=viewer).json()
    assert blocked == {"blocked": {"2.0.0": "RC-1"}}
    # A second recall cannot use the blocked version as its remedy.
    clash = client.post(
        "/api/v1/recalls",
        json={**body, "id": "RC-2", "remedy_version": "2.0.0", "blocked_versions": []},
        headers=op,
    )
    assert clash.status_code == 409

    # A device registered after opening is not frozen in; preview shows it, add brings it.
    _device(client, tokens["operator"], "pi-6", "SN006", "lot-7")
    _report(sessions, "pi-6", software_version="2.0.0", presence="online", last_seen=clock.now)
    new = client.get("/api/v1/recalls/RC-1/preview", headers=viewer).json()
    assert new["new_only"]
    assert [d["device_id"] for d in new["devices"]] == ["pi-6"]
    refused = client.post(
        "/api/v1/recalls/RC-1/devices", json={"device_ids": ["pi-6", "pi-5"]}, headers=op
    )
    assert refused.status_code == 422  # pi-5 does not match: nothing is added
    assert refused.json()["error"]["details"][0]["device_id"] == "pi-5"
    added = client.post("/api/v1/recalls/RC-1/devices", json={"device_ids": ["pi-6"]}, headers=op)
    assert added.json()["added"] == ["pi-6"]
    assert added.json()["completion"]["population"] == 5

    paged = client.get(
        "/api/v1/recalls/RC-1/devices", params={"limit": 2, "offset": 2}, headers=viewer
    ).json()
    assert paged["total"] == 5
    assert [m["device_id"] for m in paged["items"]] == ["pi-3", "pi-4"]
    assert paged["next_cursor"] == "o4"

    # Software remedy through the rollout hook: the remedy rollout targets the members.
    link = client.put(
        "/api/v1/recalls/RC-1/remedy-rollout", json={"rollout_id": "ro-fix"}, headers=op
    )
    assert link.status_code == 200
    targets = client.get("/api/v1/recalls/RC-1/remedy-targets", headers=viewer).json()
    assert targets["device_ids"] == ["pi-1", "pi-2", "pi-3", "pi-4", "pi-6"]
    with sessions() as s:
        assert recalls.remedy_rollout_exempt(s, "ro-fix") == recalls.recall_held_device_keys(s)
        assert recalls.remedy_rollout_exempt(s, "ro-other") == set()
    # Three devices install the fix (one a higher release); the job marks them remedied.
    _report(sessions, "pi-1", software_version="2.0.1")
    _report(sessions, "pi-2", software_version="2.1.0")
    _report(sessions, "pi-3", software_version="2.0.1")
    settings = settings_for(db_url)
    assert run_recall_remedy_check(sessions, settings, clock.now) == 3
    assert run_recall_remedy_check(sessions, settings, clock.now) == 0
    targets = client.get("/api/v1/recalls/RC-1/remedy-targets", headers=viewer).json()
    assert targets["device_ids"] == ["pi-4", "pi-6"]
    with sessions() as s:
        assert len(recalls.recall_held_device_keys(s)) == 2  # remedied devices are released

    # pi-6 goes silent beyond the limit: unreachable, counted apart in the adjusted rate.
    clock.advance(40 * 86400)
    _report(sessions, "pi-4", presence="online", last_seen=clock.now)
    _report(sessions, "pi-6", presence="offline")
    assert run_recall_snapshots(sessions, settings, clock.now) == 1
    cur = client.get("/api/v1/recalls/RC-1/progress", headers=viewer).json()
    snap = cur["snapshots"][-1]
    assert (snap["population"], snap["remedied"], snap["unreachable"]) == (5, 3, 1)
    assert snap["raw_rate"] == 0.6
    assert snap["adjusted_rate"] == 0.75
    assert "population - unreachable" in cur["current"]["adjusted_rate_definition"]

    # Illegal member move is refused with the allowed ones; a legal one is audited.
    bad_move = client.post(
        "/api/v1/recalls/RC-1/devices/pi-1/state", json={"state": "notified"}, headers=op
    )
    assert bad_move.status_code == 409
    assert bad_move.json()["error"]["details"]["allowed"] == []
    ok = client.post(
        "/api/v1/recalls/RC-1/devices/pi-4/state",
        json={"state": "not_needed", "note": "inspected on site, fan fine"},
        headers={**op, "X-Request-ID": "req-rc-1"},
    )
    assert ok.status_code == 200
    assert ok.json()["state"] == "not_needed"
    run_recall_snapshots(sessions, settings, clock.now)

    # Exports.
    affected = client.get("/api/v1/recalls/RC-1/export/affected.csv", headers=viewer)
    assert affected.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(affected.text)))
    assert [r["device_id"] for r in rows] == ["pi-1", "pi-2", "pi-3", "pi-4", "pi-6"]
    assert rows[4]["state"] == "unreachable"
    assert rows[4]["added_how"] == "added"
    assert "batch lot-7 in [lot-7]" in rows[0]["matched"]
    report = list(
        csv.reader(
            io.StringIO(client.get("/api/v1/recalls/RC-1/export/progress.csv", headers=viewer).text)
        )
    )
    assert report[0][5].startswith("raw_rate")
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[0]) for r in report[1:])
    assert report[0][6].startswith("adjusted_rate")
    assert [r[5] for r in report[1:]] == ["0.6000", "0.8000"]
    assert report[-1][6] == "1.0000"

    # Closing keeps the version blocked and releases the hold.
    assert client.post("/api/v1/recalls/RC-1/close", headers=op).json()["state"] == "closed"
    with sessions() as s:
        assert recalls.is_version_blocked(s, "2.0.0")
        assert recalls.recall_held_device_keys(s) == set()
        actions = [
            a.action for a in s.execute(select(AuditEntry).order_by(AuditEntry.id)).scalars()
        ]
        entry = s.execute(
            select(AuditEntry).where(AuditEntry.request_id == "req-rc-1")
        ).scalar_one()
    for action in (
        "recall.create",
        "recall.open",
        "recall.add_devices",
        "recall.remedy_rollout",
        "recall.device_state",
        "recall.close",
    ):
        assert action in actions
    assert entry.actor == "test-operator"
    assert entry.before["state"] == "notified"
    assert entry.after["state"] == "not_needed"


def test_physical_recall_needs_a_remedy_and_software_does_not_close_it(api, sessions) -> None:
    client, tokens, _clock = api
    op = _h(tokens["operator"])
    _device(client, tokens["operator"], "pi-a", "SN100", "lot-1", production_date="2026-01-05")
    _device(client, tokens["operator"], "pi-b", "SN200", "lot-1", production_date="2026-03-05")
    _device(client, tokens["operator"], "pi-c", "SN120", "=1+2", production_date="2026-01-09")
    none = client.post(
        "/api/v1/recalls",
        json={"id": "RC-P", "title": "t", "scope": {"batches": ["lot-1"]}},
        headers=op,
    )
    assert none.status_code == 422
    assert "remedy" in none.json()["error"]["message"]
    body = {
        "id": "RC-P",
        "title": "Battery swelling",
        "scope": {
            "serial_range": {"from": "SN50", "to": "SN150"},
            "production_window": {"from": "2026-01-01", "to": "2026-01-31"},
        },
        "physical_action": "replace",
        "safety_critical": True,
    }
    assert client.post("/api/v1/recalls", json=body, headers=op).status_code == 201
    assert (
        client.post("/api/v1/recalls/RC-P/open", headers=op).json()["completion"]["population"] == 2
    )
    done = client.post(
        "/api/v1/recalls/RC-P/devices/pi-a/state", json={"state": "remedied"}, headers=op
    )
    assert done.json()["remedied_via"] == "replace"
    missing = client.post(
        "/api/v1/recalls/RC-P/devices/pi-b/state", json={"state": "remedied"}, headers=op
    )
    assert missing.status_code == 404
    # Drafts are cancelled, not closed; closed campaigns take no member changes.
    assert client.post("/api/v1/recalls/RC-P/close", headers=op).status_code == 200
    late = client.post(
        "/api/v1/recalls/RC-P/devices/pi-a/state", json={"state": "not_needed"}, headers=op
    )
    assert late.status_code == 409
    listed = client.get("/api/v1/recalls", headers=_h(tokens["viewer"])).json()
    assert listed["total"] == 1
    assert listed["items"][0]["completion"]["raw_rate"] == 0.5
    # Free text in the export cannot become a spreadsheet formula.
    text = client.get("/api/v1/recalls/RC-P/export/affected.csv", headers=_h(tokens["viewer"])).text
    row = next(r for r in csv.DictReader(io.StringIO(text)) if r["device_id"] == "pi-c")
    assert row["batch"] == "'=1+2"


def test_fleetctl_recall_commands(sessions, db_url, tmp_path) -> None:
    """fleetctl against a live server: create from JSON, open, explain, export, errors."""
    import json as _json

    from typer.testing import CliRunner

    from fleet_server.api import create_app
    from fleet_server.fleetctl.cli import app as ctl
    from tests.server_fixtures import FakeClock, make_tokens, serve

    live = serve(create_app(settings_for(db_url), sessions=sessions, clock=FakeClock()))
    try:
        tokens = make_tokens(sessions)
        runner = CliRunner()
        base = ["--url", live.url, "--token", tokens["operator"]]
        import httpx

        httpx.post(
            f"{live.url}/api/v1/devices",
            json={"device_id": "pi-c1", "model": "m9", "batch": "b1"},
            headers=_h(tokens["operator"]),
        ).raise_for_status()
        spec = tmp_path / "rc.json"
        spec.write_text(
            _json.dumps(
                {
                    "id": "RC-C",
                    "title": "cli",
                    "scope": {"models": ["m9"]},
                    "physical_action": "inspect",
                }
            )
        )
        created = runner.invoke(ctl, [*base, "recall", "create", str(spec), "--json"])
        assert created.exit_code == 0, created.output
        assert _json.loads(created.output)["state"] == "draft"
        opened = runner.invoke(ctl, [*base, "recall", "open", "RC-C", "--yes"])
        assert opened.exit_code == 0, opened.output
        assert "RC-C" in opened.output
        explained = runner.invoke(ctl, [*base, "recall", "explain", "RC-C", "pi-c1"])
        assert "frozen: model m9 in [m9]" in explained.output
        exported = runner.invoke(ctl, [*base, "recall", "export", "RC-C", "affected"])
        assert exported.output.splitlines()[1].startswith("pi-c1,")
        again = runner.invoke(ctl, [*base, "recall", "open", "RC-C", "--yes"])
        assert again.exit_code != 0
        assert "allowed: closed" in str(again.exception) + again.output
        # field-service outcomes: a bad row names its line and column, nothing applied
        sheet = tmp_path / "outcomes.csv"
        sheet.write_text("device_id,state\npi-c1,exploded\n")
        bad = runner.invoke(ctl, [*base, "recall", "outcomes", "import", "RC-C", str(sheet)])
        assert bad.exit_code != 0
        assert "line 2, column state" in str(bad.exception) + bad.output
        sheet.write_text("device_id,state,note\npi-c1,not_needed,inspected\n")
        args = [*base, "recall", "outcomes", "import", "RC-C", str(sheet), "--json"]
        good = runner.invoke(ctl, args)
        assert good.exit_code == 0, good.output
        assert _json.loads(good.output)["by_state"] == {"not_needed": 1}
    finally:
        live.stop()


@pytest.mark.mosquitto
def test_safe_mode_is_signed_sent_and_acked(mosquitto, sessions, db_url, tmp_path) -> None:
    """Admin sends safe mode over real Mosquitto; the command verifies with the agent's
    verifier and the provisioned public key; acks (completed / not_permitted) show up."""
    import threading

    import paho.mqtt.client as mqtt
    from fastapi.testclient import TestClient
    from paho.mqtt.enums import CallbackAPIVersion

    import protocol as p
    from agent.safe_mode import Verifier
    from fleet_server.adapters.mqtt_publisher import PahoPublisher
    from fleet_server.api import create_app
    from fleet_server.services.ingest import BatchWriter, Inbound
    from fleet_server.services.safe_mode import create_safety_key
    from tests.server_fixtures import FakeClock, make_tokens

    private, public = create_safety_key(tmp_path / "keys")
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    clock = FakeClock()
    settings = settings_for(db_url, recalls={"safety_key": str(private)})
    app = create_app(settings, sessions=sessions, publisher=publisher, clock=clock)
    tokens = make_tokens(sessions)
    received: list[tuple[str, bytes]] = []
    got = threading.Event()
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sm-listener", protocol=mqtt.MQTTv5)
    dev.on_message = lambda _c, _u, m: (received.append((m.topic, m.payload)), got.set())
    dev.connect(mosquitto.host, mosquitto.port)
    dev.subscribe("fleet/v1/+/command", qos=1)
    dev.loop_start()
    try:
        with TestClient(app) as client:
            op, admin = _h(tokens["operator"]), _h(tokens["admin"])
            for i in (1, 2):
                _device(client, tokens["operator"], f"pi-s{i}", f"SS{i}", "lot-s")
            body = {
                "id": "RC-S",
                "title": "battery",
                "scope": {"batches": ["lot-s"]},
                "physical_action": "replace",
                "safety_critical": True,
            }
            assert client.post("/api/v1/recalls", json=body, headers=op).status_code == 201
            assert client.post("/api/v1/recalls/RC-S/open", headers=op).status_code == 200
            url = "/api/v1/recalls/RC-S/safe-mode"
            assert client.post(url, json={"reason": "x"}, headers=op).status_code == 403
            sent = client.post(url, json={"reason": "battery swelling"}, headers=admin)
            assert sent.status_code == 200, sent.text
            assert [s["device_id"] for s in sent.json()["sent"]] == ["pi-s1", "pi-s2"]
            wait_for(lambda: len(received) >= 2, timeout=10)
            verifier = Verifier.from_file(public)
            cmds = [p.decode(topic, raw) for topic, raw in received]
            for cmd in cmds:
                assert isinstance(cmd, p.SafeMode)
                assert cmd.campaign_id == "RC-S"
                assert verifier.verify(cmd.signature, p.safe_mode_signed_bytes(cmd))
                forged = msgspec.structs.replace(cmd, device_id="pi-other")
                assert not verifier.verify(forged.signature, p.safe_mode_signed_bytes(forged))
            by_device = {c.device_id: c for c in cmds}
            acks = [
                p.CommandAck(
                    device_id="pi-s1",
                    boot_id="b",
                    seq=1,
                    ts=clock.now,
                    command_id=by_device["pi-s1"].id,
                    status=p.AckStatus.COMPLETED,
                    result={"active": True},
                ),
                p.CommandAck(
                    device_id="pi-s2",
                    boot_id="b",
                    seq=1,
                    ts=clock.now,
                    command_id=by_device["pi-s2"].id,
                    status=p.AckStatus.REJECTED,
                    reason=p.RejectReason.NOT_PERMITTED,
                    detail="bad safe-mode signature",
                ),
            ]
            BatchWriter(sessions, auto_register=False).write(
                [Inbound(p.topic(a.device_id, p.Kind.EVENT), p.encode(a), clock.now) for a in acks]
            )
            viewer = _h(tokens["viewer"])
            s1 = client.get("/api/v1/devices/pi-s1/commands", headers=viewer).json()["items"][0]
            s2 = client.get("/api/v1/devices/pi-s2/commands", headers=viewer).json()["items"][0]
            assert (s1["kind"], s1["status"]) == ("safe_mode", "completed")
            assert (s2["status"], s2["reason"]) == ("rejected", "not_permitted")
            member = client.get("/api/v1/recalls/RC-S/devices", headers=viewer).json()["items"][0]
            assert member["safe_mode_command_id"] == by_device["pi-s1"].id
            # Not for recalls that are not safety-critical; not without a key.
            plain = {**body, "id": "RC-T", "safety_critical": False}
            client.post("/api/v1/recalls", json=plain, headers=op)
            client.post("/api/v1/recalls/RC-T/open", headers=op)
            assert (
                client.post(
                    "/api/v1/recalls/RC-T/safe-mode", json={"reason": "x"}, headers=admin
                ).status_code
                == 409
            )
        keyless = create_app(settings_for(db_url), sessions=sessions, publisher=publisher)
        with TestClient(keyless) as client:
            r = client.post(url, json={"reason": "x"}, headers=_h(tokens["admin"]))
            assert r.status_code == 409
            assert "safety-key create" in r.json()["error"]["message"]
    finally:
        dev.loop_stop()
        dev.disconnect()
        publisher.close()


def test_progress_is_computed_on_demand_and_exports_say_where_devices_are(api, sessions) -> None:
    """A member gone silent counts as unreachable in ``/progress`` at once (no snapshot
    job ran); the affected list has owner, region and location columns."""
    client, tokens, clock = api
    op, viewer = _h(tokens["operator"]), _h(tokens["viewer"])
    for dev, serial in (("pi-d1", "SN1"), ("pi-d2", "SN2")):
        _device(
            client,
            tokens["operator"],
            dev,
            serial,
            "lot-9",
            owner="ACME Ltd",
            region="eu",
            tags=["location:Plant 4, bay 2"],
        )
    _report(sessions, "pi-d1", presence="online", last_seen=clock.now)
    _report(sessions, "pi-d2", presence="offline", last_seen=clock.now - 40 * 86400)
    body = {
        "id": "RC-D",
        "title": "Fan bearing",
        "scope": {"batches": ["lot-9"]},
        "physical_action": "replace",
    }
    assert client.post("/api/v1/recalls", json=body, headers=op).status_code == 201
    assert client.post("/api/v1/recalls/RC-D/open", headers=op).status_code == 200
    current = client.get("/api/v1/recalls/RC-D/progress", headers=viewer).json()["current"]
    assert current["unreachable"] == 1
    # One time format in answers: ISO 8601 UTC.
    computed = datetime.fromisoformat(current["computed_at"].replace("Z", "+00:00"))
    assert computed == datetime.fromtimestamp(clock.now, UTC)
    assert current["adjusted_rate"] == 0.0
    text = client.get("/api/v1/recalls/RC-D/export/affected.csv", headers=viewer).text
    rows = {r["device_id"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["pi-d1"]["owner"] == "ACME Ltd"
    assert rows["pi-d1"]["region"] == "eu"
    assert rows["pi-d1"]["location"] == "Plant 4, bay 2"


def test_bulk_outcomes_from_a_field_service_csv(api, sessions) -> None:
    """All rows or none; every bad row named by line and column."""
    client, tokens, _clock = api
    op = _h(tokens["operator"])
    for dev, serial in (("pi-o1", "SO1"), ("pi-o2", "SO2"), ("pi-o3", "SO3")):
        _device(client, tokens["operator"], dev, serial, "lot-5")
    body = {"id": "RC-O", "title": "t", "scope": {"batches": ["lot-5"]}}
    body["physical_action"] = "replace"
    assert client.post("/api/v1/recalls", json=body, headers=op).status_code == 201
    assert client.post("/api/v1/recalls/RC-O/open", headers=op).status_code == 200
    csv_headers = {**op, "Content-Type": "text/csv"}
    bad = "device_id,serial,state,note\npi-o1,,remedied,ok\n,,remedied,\npi-zz,,remedied,\n"
    r = client.post("/api/v1/recalls/RC-O/outcomes", content=bad, headers=csv_headers)
    assert r.status_code == 422, r.text
    errors = r.json()["error"]["details"]["errors"]
    assert {(e["line"], e["column"]) for e in errors} == {(3, "device_id"), (4, "device_id")}
    progress = client.get("/api/v1/recalls/RC-O/progress", headers=op).json()["current"]
    assert progress["remedied"] == 0  # nothing applied
    good = "serial,state,note\nSO1,remedied,fan swapped\nSO2,not_needed,inspected\n"
    r = client.post("/api/v1/recalls/RC-O/outcomes", content=good, headers=csv_headers)
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == 2
    current = client.get("/api/v1/recalls/RC-O/progress", headers=op).json()["current"]
    assert (current["remedied"], current["not_needed"]) == (1, 1)
