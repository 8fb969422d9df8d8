"""Saved device groups and bulk actions through the API, as operators use them: static
and dynamic groups (membership computed when used), a group as a rollout target, and bulk
actions with a dry-run count, a confirmation bound to the selection, and the audit trail."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.api import create_app
from fleet_server.db.models import AuditEntry, CommandRecord
from tests.conftest import wait_for
from tests.server_fixtures import make_tokens, settings_for
from tests.support.sim_fleet import add_bundle, register_fleet


def _auth(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def _add(client: TestClient, ops: dict[str, str], device_id: str, region: str) -> None:
    r = client.post("/api/v1/devices", json={"device_id": device_id, "region": region}, headers=ops)
    assert r.status_code == 201, r.text


def test_static_and_dynamic_groups(api) -> None:
    client, tokens, _clock = api
    ops, viewer = _auth(tokens, "operator"), _auth(tokens, "viewer")
    for i, region in enumerate(["eu", "eu", "us"]):
        _add(client, ops, f"pi-{i}", region)

    eu = client.post(
        "/api/v1/groups",
        json={"name": "eu-fleet", "kind": "dynamic", "selector": {"region": "eu"}},
        headers=ops,
    )
    assert eu.status_code == 201, eu.text
    assert eu.json()["devices"] == 2
    static = client.post(
        "/api/v1/groups",
        json={"name": "bench", "kind": "static", "device_ids": ["pi-0", "pi-2"]},
        headers=ops,
    )
    assert static.json()["devices"] == 2
    # Membership of a dynamic group is computed when it is used.
    _add(client, ops, "pi-3", "eu")
    members = client.get("/api/v1/groups/eu-fleet/devices", headers=viewer).json()
    assert [d["device_id"] for d in members["items"]] == ["pi-0", "pi-1", "pi-3"]
    listed = client.get("/api/v1/groups", headers=viewer).json()["items"]
    assert {g["name"]: g["devices"] for g in listed} == {"bench": 2, "eu-fleet": 3}

    unknown = client.post(
        "/api/v1/groups",
        json={"name": "typo", "kind": "static", "device_ids": ["pi-0", "pi-404"]},
        headers=ops,
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"]["code"] == "unknown_devices"
    assert unknown.json()["error"]["details"]["unknown"] == ["pi-404"]
    bad = client.post(
        "/api/v1/groups",
        json={"name": "bad", "kind": "dynamic", "selector": {"colour": "red"}},
        headers=ops,
    )
    assert bad.json()["error"]["code"] == "invalid_selector"
    dup = client.post(
        "/api/v1/groups", json={"name": "bench", "kind": "static", "device_ids": []}, headers=ops
    )
    assert dup.status_code == 409
    assert client.post("/api/v1/groups", json={}, headers=viewer).status_code == 403

    changed = client.patch(
        "/api/v1/groups/bench",
        json={"add_devices": ["pi-1"], "remove_devices": ["pi-0"]},
        headers=ops,
    )
    assert changed.json()["devices"] == 2
    members = client.get("/api/v1/groups/bench/devices", headers=viewer).json()["items"]
    assert [d["device_id"] for d in members] == ["pi-1", "pi-2"]
    assert client.delete("/api/v1/groups/bench", headers=ops).status_code == 200
    assert client.get("/api/v1/groups/bench", headers=viewer).status_code == 404


def test_a_group_is_a_rollout_target(api, sessions) -> None:
    client, tokens, _clock = api
    ops = _auth(tokens, "operator")
    register_fleet(sessions, 12, revisions={"rev-a": 1.0})
    bundle = add_bundle(sessions, "2.0.0", revisions=["rev-a"])
    pilots = ["sim-00001", "sim-00004", "sim-00007"]
    client.post(
        "/api/v1/groups",
        json={"name": "pilots", "kind": "static", "device_ids": pilots},
        headers=ops,
    )
    body = {"bundle": bundle, "selector": {"group": "pilots"}}
    plan = client.post("/api/v1/rollouts/dry-run", json=body, headers=ops).json()
    assert plan["targeted"] == 3
    assert sorted(d for w in plan["waves"] for d in w["devices"]) == pilots

    created = client.post("/api/v1/rollouts", json=body, headers=ops)
    assert created.status_code == 201, created.text
    assert created.json()["selector"] == {"device_ids": pilots}
    started = client.post(f"/api/v1/rollouts/{created.json()['id']}/start", headers=ops)
    assert started.status_code == 200, started.text

    # A group plus a further filter; a clash with the group's own selector is refused.
    client.post(
        "/api/v1/groups",
        json={"name": "lot-2", "kind": "dynamic", "selector": {"batch": "lot-2"}},
        headers=ops,
    )
    narrowed = {"bundle": bundle, "selector": {"group": "lot-2", "region": "eu"}}
    plan = client.post("/api/v1/rollouts/dry-run", json=narrowed, headers=ops).json()
    assert plan["targeted"] == 2  # sim-00002 and sim-00008
    clash = {"bundle": bundle, "selector": {"group": "lot-2", "batch": "lot-3"}}
    refused = client.post("/api/v1/rollouts/dry-run", json=clash, headers=ops)
    assert refused.json()["error"]["code"] == "invalid_selector"
    missing = {"bundle": bundle, "selector": {"group": "nope"}}
    assert client.post("/api/v1/rollouts/dry-run", json=missing, headers=ops).status_code == 404


def test_bulk_tag_needs_a_confirmation_bound_to_the_selection(api, sessions) -> None:
    client, tokens, _clock = api
    ops = _auth(tokens, "operator")
    for i in range(3):
        _add(client, ops, f"pi-{i}", "eu")
    body = {"action": "tag", "selector": {"region": "eu"}, "tags": ["field-trial"]}

    dry = client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=ops)
    assert dry.status_code == 200, dry.text
    preview = dry.json()
    assert (preview["count"], preview["executed"]) == (3, False)
    assert preview["sample"] == ["pi-0", "pi-1", "pi-2"]

    unconfirmed = client.post("/api/v1/bulk", json=body, headers=ops)
    assert unconfirmed.status_code == 422
    assert unconfirmed.json()["error"]["code"] == "confirmation_required"
    other_action = {**body, "tags": ["other"], "confirmation_token": preview["confirmation_token"]}
    assert client.post("/api/v1/bulk", json=other_action, headers=ops).status_code == 409
    _add(client, ops, "pi-3", "eu")  # the selection changed since the dry run
    stale = client.post(
        "/api/v1/bulk",
        json={**body, "confirmation_token": preview["confirmation_token"]},
        headers=ops,
    )
    assert stale.status_code == 409
    assert stale.json()["error"]["code"] == "confirmation_mismatch"
    assert stale.json()["error"]["details"] == {"count": 4}

    token = client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=ops).json()
    done = client.post(
        "/api/v1/bulk",
        json={**body, "confirmation_token": token["confirmation_token"]},
        headers=ops,
    )
    assert done.status_code == 200, done.text
    assert (done.json()["count"], done.json()["succeeded"]) == (4, 4)
    tagged = client.get("/api/v1/devices", params={"tag": "field-trial"}, headers=ops).json()
    assert tagged["total"] == 4
    with sessions() as s:
        rows = s.execute(select(AuditEntry).where(AuditEntry.action == "bulk.tag")).scalars().all()
    assert sorted(r.target_id for r in rows if r.target_type == "device") == [
        "pi-0",
        "pi-1",
        "pi-2",
        "pi-3",
    ]
    summary = [r for r in rows if r.target_type == "bulk"]
    assert len(summary) == 1
    assert summary[0].target_id == done.json()["bulk_id"]
    assert summary[0].after["count"] == 4

    fields = {
        "action": "set_fields",
        "selector": {"tags": ["field-trial"]},
        "fields": {"owner": "acme"},
    }
    token = client.post("/api/v1/bulk", json={**fields, "dry_run": True}, headers=ops).json()
    client.post(
        "/api/v1/bulk",
        json={**fields, "confirmation_token": token["confirmation_token"]},
        headers=ops,
    )
    assert client.get("/api/v1/devices", params={"owner": "acme"}, headers=ops).json()["total"] == 4
    serial = {**fields, "fields": {"serial": "SN-1"}, "dry_run": True}
    assert client.post("/api/v1/bulk", json=serial, headers=ops).json()["error"]["code"] == (
        "invalid_bulk"
    )
    # Technicians may collect diagnostics in bulk, not change the registry.
    tech = _auth(tokens, "technician")
    assert (
        client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=tech).status_code == 403
    )
    diag = {"action": "collect_diagnostics", "selector": {"region": "eu"}, "dry_run": True}
    assert client.post("/api/v1/bulk", json=diag, headers=tech).json()["count"] == 4


@pytest.mark.mosquitto
def test_bulk_reboot_of_a_group_sends_one_command_per_device(mosquitto, sessions, db_url) -> None:
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    app = create_app(settings_for(db_url), sessions=sessions, publisher=publisher)
    tokens = make_tokens(sessions)
    ops = _auth(tokens, "operator")
    try:
        with TestClient(app) as client:
            for i in range(3):
                _add(client, ops, f"pi-{i}", "eu")
            client.post(
                "/api/v1/groups",
                json={"name": "lab", "kind": "static", "device_ids": ["pi-0", "pi-2"]},
                headers=ops,
            )
            body = {"action": "reboot", "group": "lab", "reason": "kernel update"}
            dry = client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=ops).json()
            assert dry["count"] == 2
            done = client.post(
                "/api/v1/bulk",
                json={**body, "confirmation_token": dry["confirmation_token"]},
                headers=ops,
            )
            assert done.status_code == 200, done.text
            assert done.json()["failed"] == []

            # With the broker down the first device fails and the rest are not tried.
            mosquitto.stop()
            wait_for(lambda: not publisher._connected.is_set(), timeout=10)
            body = {"action": "check_update", "selector": {"region": "eu"}}
            dry = client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=ops).json()
            started = time.monotonic()
            down = client.post(
                "/api/v1/bulk",
                json={**body, "confirmation_token": dry["confirmation_token"]},
                headers=ops,
            ).json()
            assert time.monotonic() - started < 15  # one broker timeout, not one per device
            assert (down["count"], down["succeeded"]) == (3, 0)
            assert [f["device_id"] for f in down["failed"]] == ["pi-0", "pi-1", "pi-2"]
            assert all("not sent" in f["error"] for f in down["failed"][1:])
    finally:
        publisher.close()
    with sessions() as s:
        sent = s.execute(select(CommandRecord).where(CommandRecord.kind == "reboot")).scalars()
        assert sorted(c.status for c in sent) == ["sent"] * 2
        audited = s.execute(
            select(AuditEntry.target_id).where(AuditEntry.action == "command.reboot")
        ).scalars()
        assert sorted(audited) == ["pi-0", "pi-2"]
        assert (
            s.execute(select(AuditEntry).where(AuditEntry.action == "bulk.reboot"))
            .scalar_one()
            .after["succeeded"]
            == 2
        )
