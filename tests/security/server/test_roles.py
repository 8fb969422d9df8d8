"""Least privilege: every API route declares a role, and each role can call exactly the
routes at or below its level. Every mutating call leaves an audit row."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from sqlalchemy import update as sql_update

import protocol as p
from agent.credentials import make_device_key_and_csr
from firmware_bundles.examples import build_examples
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.api import create_app
from fleet_server.api.app import route_table
from fleet_server.db.models import AuditEntry, Device
from fleet_server.domain.roles import (
    PERMISSIONS,
    Role,
    UndeclaredRouteError,
    required_role,
)
from fleet_server.identity import ca_store
from fleet_server.services.audit import SYSTEM
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.registry import create_device
from fleet_server.services.safe_mode import create_safety_key
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository
from tests.server_fixtures import FakeClock, make_tokens, settings_for

PATH_VALUES = {
    "device_id": "pi-matrix",
    "alarm_id": "1",
    "token_id": "999999",
    "bundle_id": "1",
    "token": "not-a-real-upload-token",
    "name": "edgefleet-demo-gw-100-9.9.9-r9.tar.gz",
    "execution_id": "ex-unknown",
    "rollout_id": "ro-none",
    "path": "no-such-target",
    "campaign_id": "RC-none",
    "claim_id": "999999",
    "rma_id": "999999",
    "serial": "no-such-part",
    "webhook_id": "999999",
    "group_name": "no-such-group",
    "model": "no-such-model",
    "advisory_id": "GHSA-none",
    "version": "9.9.9",
    "number": "TKT-none",
    "kind": "device",
    "ref": "no-such-device",
    "username": "no-such-user",
}
MUTATING = {"POST", "PATCH", "PUT", "DELETE"}
READ_ONLY_POSTS = {("POST", "/api/v1/rollouts/dry-run")}
"""POST routes that change nothing (a body too rich for a query string), so no audit row."""


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def _call(client: TestClient, method: str, path: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if method in MUTATING:
        kwargs["json"] = {}
    return client.request(method, _fill(path), **kwargs)


def test_every_route_has_a_declared_permission(api) -> None:
    client, _tokens, _clock = api
    routes = route_table(client.app)
    assert routes, "the app exposes no routes?"
    undeclared = [r for r in routes if r not in PERMISSIONS]
    assert not undeclared, f"routes without a permission entry: {undeclared}"
    stale = [r for r in PERMISSIONS if r not in routes]
    assert not stale, f"permission entries without a route: {stale}"


def test_undeclared_routes_are_refused(api) -> None:
    client, tokens, _clock = api
    with pytest.raises(UndeclaredRouteError):
        required_role("GET", "/api/v1/not-declared")

    @client.app.get("/api/v1/not-declared")
    def _sneaky() -> dict[str, str]:
        return {"secret": "data"}

    response = client.get(
        "/api/v1/not-declared", headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_role_by_endpoint_matrix(api) -> None:
    client, tokens, _clock = api
    for method, path in route_table(client.app):
        needed = PERMISSIONS[(method, path)]
        anonymous = _call(client, method, path, None)
        if needed is None:
            assert anonymous.status_code not in (401, 403), (method, path, anonymous.text)
            continue
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.json()["error"]["code"] == "unauthorized"
        for role in Role:
            response = _call(client, method, path, tokens[role.value])
            if role.allows(needed):
                assert response.status_code not in (401, 403), (role, method, path, response.text)
            else:
                assert response.status_code == 403, (role, method, path, response.status_code)
                assert response.json()["error"]["code"] == "forbidden"


def test_bad_and_revoked_tokens_are_unauthorized(api) -> None:
    client, tokens, _clock = api
    for bad in ("efk_wrong", "not-even-a-prefix", ""):
        r = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    listed = client.get("/api/v1/tokens", headers=admin).json()["items"]
    viewer_id = next(t["id"] for t in listed if t["role"] == "viewer")
    assert client.delete(f"/api/v1/tokens/{viewer_id}", headers=admin).status_code == 200
    r = client.get("/api/v1/devices", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert r.status_code == 401


@pytest.mark.mosquitto
def test_command_kinds_have_their_own_roles(mosquitto, sessions, db_url) -> None:
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    app = create_app(settings_for(db_url), sessions=sessions, publisher=publisher)
    tokens = make_tokens(sessions)
    try:
        with TestClient(app) as client:
            hdr = {"Authorization": f"Bearer {tokens['admin']}"}
            assert (
                client.post("/api/v1/devices", json={"device_id": "pi-c"}, headers=hdr).status_code
                == 201
            )
            url = "/api/v1/devices/pi-c/commands"
            tech = {"Authorization": f"Bearer {tokens['technician']}"}
            assert (
                client.post(url, json={"kind": "collect_diagnostics"}, headers=tech).status_code
                == 202
            )
            denied = client.post(url, json={"kind": "reboot"}, headers=tech)
            assert denied.status_code == 403
            op = {"Authorization": f"Bearer {tokens['operator']}"}
            assert client.post(url, json={"kind": "reboot"}, headers=op).status_code == 202
    finally:
        publisher.close()


@pytest.mark.mosquitto
def ticket_scenarios(admin: dict[str, str]) -> dict[tuple[str, str], Any]:
    """One audited call per support route (run in this order)."""
    t = "/api/v1/tickets"
    one = f"{t}/TKT-000001"
    log = (
        "number,incident_state,sys_updated_at,made_sla,priority\n"
        "INC1,New,29-02-2016 01:16,true,3 - Moderate\n"
    )
    return {
        ("POST", t): lambda c: c.post(
            t,
            json={"title": "noisy fan", "category": "device_hardware", "requester": "acme"},
            headers=admin,
        ),
        ("PATCH", f"{t}/{{number}}"): lambda c: c.patch(one, json={"impact": 1}, headers=admin),
        ("POST", f"{t}/{{number}}/transition"): lambda c: c.post(
            f"{one}/transition", json={"state": "in_progress"}, headers=admin
        ),
        ("POST", f"{t}/{{number}}/comments"): lambda c: c.post(
            f"{one}/comments", json={"body": "on it", "public": True}, headers=admin
        ),
        ("POST", f"{t}/{{number}}/links"): lambda c: c.post(
            f"{one}/links", json={"kind": "device", "ref": "pi-new"}, headers=admin
        ),
        ("DELETE", f"{t}/{{number}}/links/{{kind}}/{{ref}}"): lambda c: c.delete(
            f"{one}/links/device/pi-new", headers=admin
        ),
        ("POST", f"{t}/import"): lambda c: c.post(
            f"{t}/import", content=log.encode(), headers={**admin, "Content-Type": "text/csv"}
        ),
    }


def test_every_mutating_call_is_audited(mosquitto, sessions, db_url, tmp_path) -> None:
    """Runs one successful call per mutating route; a new mutating route without a
    scenario here fails the test."""
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    clock = FakeClock()
    root = create_root_keys(tmp_path / "root", count=1, threshold=1)
    TufRepository.create(tmp_path / "tuf", tmp_path / "keys", list(root.signers.values()), 1)
    bundle = build_examples(tmp_path / "bundles", ("good-1.1.0",))["good-1.1.0"]
    safety_key, _public = create_safety_key(tmp_path / "safety")
    now = datetime.fromtimestamp(clock.now, UTC)
    ca_store.init_root(tmp_path / "ca-root", now)
    ca_store.init_issuing(tmp_path / "ca-root", tmp_path / "issuing", now)
    settings = settings_for(
        db_url,
        updates={"repo_dir": str(tmp_path / "tuf"), "keys_dir": str(tmp_path / "keys")},
        recalls={"safety_key": str(safety_key)},
        security={"ca_dir": str(tmp_path / "issuing"), "device_mqtt_url": "mqtts://m"},
    )
    app = create_app(settings, sessions=sessions, publisher=publisher, clock=clock)
    tokens = make_tokens(sessions)
    admin = {"Authorization": f"Bearer {tokens['admin']}", "X-Request-ID": "req-audit-1"}
    with sessions() as s:
        create_device(
            s,
            {"device_id": "pi-upd", "model": "gw-100", "hw_revision": "rev-a"},
            actor=SYSTEM,
            now=clock.now,
        )
        s.commit()
    executions: list[str] = []

    def update(client: TestClient) -> Any:
        r = client.post(
            "/api/v1/devices/pi-upd/update",
            json={"bundle": "edgefleet-demo-gw-100-1.1.0-r1.tar.gz"},
            headers=admin,
        )
        executions.append(r.json().get("id", ""))
        return r

    # A device that raised a fault, for the alarm ack.
    BatchWriter(sessions, auto_register=True).write(
        [
            Inbound(
                p.topic("pi-a1", p.Kind.EVENT),
                p.encode(
                    p.FaultRaised(
                        device_id="pi-a1",
                        boot_id="b",
                        seq=1,
                        ts=clock.now,
                        code="overheat",
                        severity=p.Severity.MAJOR,
                    )
                ),
                clock.now,
            )
        ]
    )
    # The device listens for its commands so it can use the diagnostics upload URL.
    commands: list[bytes] = []
    got = threading.Event()
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-a1", protocol=mqtt.MQTTv5)
    dev.on_message = lambda _c, _u, m: (commands.append(m.payload), got.set())
    dev.connect(mosquitto.host, mosquitto.port)
    dev.subscribe(p.topic("pi-a1", p.Kind.COMMAND), qos=1)
    dev.loop_start()

    rollouts: list[str] = []

    def remedy(client: TestClient) -> Any:
        with sessions() as s:
            create_device(
                s,
                {"device_id": "pi-exposed", "model": "gw-100", "hw_revision": "rev-a"},
                actor=SYSTEM,
                now=clock.now,
            )
            s.execute(
                sql_update(Device)
                .where(Device.device_id == "pi-exposed")
                .values(software_version="1.1.0")
            )
            s.commit()
        return client.post("/api/v1/advisories/GHSA-audit/remedy", json={}, headers=admin)

    def create_rollout(client: TestClient) -> Any:
        with sessions() as s:
            create_device(
                s,
                {"device_id": "pi-ro", "model": "gw-100", "hw_revision": "rev-a"},
                actor=SYSTEM,
                now=clock.now,
            )
            s.commit()
        r = client.post(
            "/api/v1/rollouts",
            json={
                "bundle": "edgefleet-demo-gw-100-1.1.0-r1.tar.gz",
                "selector": {"device_id": "pi-ro"},
            },
            headers=admin,
        )
        rollouts.append(r.json().get("id", ""))
        return r

    def cancel_rollout(client: TestClient) -> Any:
        draft = create_rollout_draft(client)
        return client.post(f"/api/v1/rollouts/{draft}/cancel", headers=admin)

    def create_rollout_draft(client: TestClient) -> str:
        r = client.post(
            "/api/v1/rollouts",
            json={"bundle": "edgefleet-demo-gw-100-1.1.0-r1.tar.gz", "selector": {}},
            headers=admin,
        )
        return str(r.json()["id"])

    def upload(client: TestClient) -> Any:
        client.post(
            "/api/v1/devices/pi-a1/commands", json={"kind": "collect_diagnostics"}, headers=admin
        )
        assert got.wait(10)
        cmd = p.decode(p.topic("pi-a1", p.Kind.COMMAND), commands[-1])
        path = cmd.upload_url.split("://", 1)[1].split("/", 1)[1]
        return client.post("/" + path, content=b"logs", headers={"X-Request-ID": "req-audit-1"})

    def bulk_tag(client: TestClient) -> Any:
        body = {"action": "tag", "group": "g1", "tags": ["trial"]}
        dry = client.post("/api/v1/bulk", json={**body, "dry_run": True}, headers=admin)
        token = dry.json()["confirmation_token"]
        return client.post(
            "/api/v1/bulk", json={**body, "confirmation_token": token}, headers=admin
        )

    scenarios = {
        ("POST", "/api/v1/devices"): lambda c: c.post(
            "/api/v1/devices", json={"device_id": "pi-new"}, headers=admin
        ),
        ("POST", "/api/v1/devices/import"): lambda c: c.post(
            "/api/v1/devices/import",
            content=b"device_id,model\npi-csv-1,m1\n",
            headers={**admin, "Content-Type": "text/csv"},
        ),
        ("PATCH", "/api/v1/devices/{device_id}"): lambda c: c.patch(
            "/api/v1/devices/pi-new", json={"region": "eu"}, headers=admin
        ),
        ("POST", "/api/v1/devices/{device_id}/decommission"): lambda c: c.post(
            "/api/v1/devices/pi-csv-1/decommission", json={"reason": "scrapped"}, headers=admin
        ),
        ("POST", "/api/v1/devices/{device_id}/commands"): lambda c: c.post(
            "/api/v1/devices/pi-new/commands", json={"kind": "reboot"}, headers=admin
        ),
        ("POST", "/api/v1/devices/{device_id}/unquarantine"): lambda c: c.post(
            "/api/v1/devices/pi-new/unquarantine", headers=admin
        ),
        ("POST", "/api/v1/alarms/{alarm_id}/ack"): lambda c: c.post(
            "/api/v1/alarms/1/ack", headers=admin
        ),
        ("POST", "/api/v1/tokens"): lambda c: c.post(
            "/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=admin
        ),
        ("DELETE", "/api/v1/tokens/{token_id}"): lambda c: c.delete(
            "/api/v1/tokens/1", headers=admin
        ),
        ("POST", "/api/v1/diagnostics/upload/{token}"): upload,
        ("PUT", "/api/v1/licence-policies/{model}"): lambda c: c.put(
            "/api/v1/licence-policies/gw-100",
            json={"allowed": ["Apache-2.0", "Zlib"], "needs_review": ["GPL-2.0-only"]},
            headers=admin,
        ),
        ("POST", "/api/v1/licence-policies/{model}/waivers"): lambda c: c.post(
            "/api/v1/licence-policies/gw-100/waivers",
            json={"component": "zlib@1.3.1", "reason": "audit"},
            headers=admin,
        ),
        ("POST", "/api/v1/bundles"): lambda c: c.post(
            "/api/v1/bundles",
            content=bundle.path.read_bytes(),
            headers={**admin, "Content-Type": "application/octet-stream"},
        ),
        ("POST", "/api/v1/bundles/{name}/licence-review"): lambda c: c.post(
            f"/api/v1/bundles/{bundle.path.name}/licence-review",
            json={"decision": "approved", "note": "busybox source offer shipped"},
            headers=admin,
        ),
        ("POST", "/api/v1/advisories/import"): lambda c: c.post(
            "/api/v1/advisories/import",
            json={
                "id": "GHSA-audit",
                "modified": "2026-01-01T00:00:00Z",
                "affected": [
                    {
                        "package": {"purl": "pkg:generic/busybox"},
                        "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                    }
                ],
            },
            headers=admin,
        ),
        ("POST", "/api/v1/bundles/{name}/vex"): lambda c: c.post(
            f"/api/v1/bundles/{bundle.path.name}/vex",
            json={
                "@context": "https://openvex.dev/ns/v0.2.0",
                "statements": [
                    {"vulnerability": {"name": "GHSA-audit"}, "status": "under_investigation"}
                ],
            },
            headers=admin,
        ),
        ("POST", "/api/v1/advisories/{advisory_id}/remedy"): remedy,
        ("POST", "/api/v1/devices/{device_id}/update"): update,
        ("POST", "/api/v1/executions/{execution_id}/cancel"): lambda c: c.post(
            f"/api/v1/executions/{executions[-1]}/cancel", json={"reason": "x"}, headers=admin
        ),
        ("POST", "/api/v1/rollouts"): create_rollout,
        ("POST", "/api/v1/rollouts/{rollout_id}/start"): lambda c: c.post(
            f"/api/v1/rollouts/{rollouts[0]}/start",
            json={"force_reason": "audit test"},
            headers=admin,
        ),
        ("POST", "/api/v1/rollouts/{rollout_id}/pause"): lambda c: c.post(
            f"/api/v1/rollouts/{rollouts[0]}/pause", json={"reason": "x"}, headers=admin
        ),
        ("POST", "/api/v1/rollouts/{rollout_id}/resume"): lambda c: c.post(
            f"/api/v1/rollouts/{rollouts[0]}/resume", headers=admin
        ),
        ("POST", "/api/v1/rollouts/{rollout_id}/rollback"): lambda c: c.post(
            f"/api/v1/rollouts/{rollouts[0]}/rollback", json={"to_version": "1.1.0"}, headers=admin
        ),
        ("POST", "/api/v1/rollouts/{rollout_id}/cancel"): cancel_rollout,
        ("POST", "/api/v1/recalls"): lambda c: c.post(
            "/api/v1/recalls",
            json={
                "id": "RC-A",
                "title": "audit",
                "scope": {"models": ["m1"]},
                "remedy_version": "9.9",
                "physical_action": "inspect",
                "safety_critical": True,
            },
            headers=admin,
        ),
        ("POST", "/api/v1/recalls/{campaign_id}/open"): lambda c: c.post(
            "/api/v1/recalls/RC-A/open", headers=admin
        ),
        ("POST", "/api/v1/recalls/{campaign_id}/devices"): lambda c: (
            c.post("/api/v1/devices", json={"device_id": "pi-m1", "model": "m1"}, headers=admin),
            c.post("/api/v1/recalls/RC-A/devices", json={"device_ids": ["pi-m1"]}, headers=admin),
        )[-1],
        ("POST", "/api/v1/recalls/{campaign_id}/safe-mode"): lambda c: c.post(
            "/api/v1/recalls/RC-A/safe-mode", json={"reason": "audit"}, headers=admin
        ),
        ("POST", "/api/v1/recalls/{campaign_id}/outcomes"): lambda c: c.post(
            "/api/v1/recalls/RC-A/outcomes",
            content="device_id,state\npi-m1,unreachable\n",
            headers={**admin, "Content-Type": "text/csv"},
        ),
        ("POST", "/api/v1/recalls/{campaign_id}/devices/{device_id}/state"): lambda c: c.post(
            "/api/v1/recalls/RC-A/devices/pi-m1/state", json={"state": "not_needed"}, headers=admin
        ),
        ("PUT", "/api/v1/recalls/{campaign_id}/remedy-rollout"): lambda c: c.put(
            "/api/v1/recalls/RC-A/remedy-rollout", json={"rollout_id": "ro-1"}, headers=admin
        ),
        ("POST", "/api/v1/recalls/{campaign_id}/close"): lambda c: c.post(
            "/api/v1/recalls/RC-A/close", headers=admin
        ),
        ("PUT", "/api/v1/warranty/rules"): lambda c: c.put(
            "/api/v1/warranty/rules",
            json={"model": "m1", "months": 12, "covers": ["*"]},
            headers=admin,
        ),
        ("POST", "/api/v1/claims"): lambda c: c.post(
            "/api/v1/claims",
            json={"device": "pi-m1", "failure_mode": "overheat", "failure_date": "2026-01-02"},
            headers=admin,
        ),
        ("POST", "/api/v1/claims/{claim_id}/recheck"): lambda c: c.post(
            "/api/v1/claims/1/recheck", headers=admin
        ),
        ("POST", "/api/v1/claims/{claim_id}/decision"): lambda c: c.post(
            "/api/v1/claims/1/decision", json={"decision": "approved", "note": "ok"}, headers=admin
        ),
        ("POST", "/api/v1/parts"): lambda c: c.post(
            "/api/v1/parts", json={"serial": "P-1", "kind": "fan"}, headers=admin
        ),
        ("POST", "/api/v1/parts/{serial}/install"): lambda c: c.post(
            "/api/v1/parts/P-1/install", json={"device_id": "pi-m1"}, headers=admin
        ),
        ("POST", "/api/v1/rmas"): lambda c: c.post(
            "/api/v1/rmas", json={"part_serial": "P-1"}, headers=admin
        ),
        ("POST", "/api/v1/rmas/{rma_id}/transition"): lambda c: c.post(
            "/api/v1/rmas/1/transition", json={"state": "approved"}, headers=admin
        ),
        ("POST", "/api/v1/devices/{device_id}/provision"): lambda c: c.post(
            "/api/v1/devices/pi-new/provision", headers=admin
        ),
        ("POST", "/api/v1/devices/{device_id}/certificate"): lambda c: c.post(
            "/api/v1/devices/pi-new/certificate",
            json={"csr": make_device_key_and_csr("pi-new").csr_pem.decode()},
            headers=admin,
        ),
        ("POST", "/api/v1/devices/{device_id}/revoke"): lambda c: c.post(
            "/api/v1/devices/pi-new/revoke", json={"reason": "superseded"}, headers=admin
        ),
        ("POST", "/api/v1/webhooks"): lambda c: c.post(
            "/api/v1/webhooks",
            json={"name": "ops", "url": "http://127.0.0.1:9/hook", "events": ["claim.filed"]},
            headers=admin,
        ),
        ("PATCH", "/api/v1/webhooks/{webhook_id}"): lambda c: c.patch(
            "/api/v1/webhooks/1", json={"enabled": False}, headers=admin
        ),
        ("POST", "/api/v1/webhooks/{webhook_id}/test"): lambda c: c.post(
            "/api/v1/webhooks/1/test", headers=admin
        ),
        ("DELETE", "/api/v1/webhooks/{webhook_id}"): lambda c: c.delete(
            "/api/v1/webhooks/1", headers=admin
        ),
        ("POST", "/api/v1/groups"): lambda c: c.post(
            "/api/v1/groups",
            json={"name": "g1", "kind": "static", "device_ids": ["pi-m1"]},
            headers=admin,
        ),
        ("PATCH", "/api/v1/groups/{group_name}"): lambda c: c.patch(
            "/api/v1/groups/g1", json={"description": "field trial"}, headers=admin
        ),
        ("POST", "/api/v1/bulk"): bulk_tag,
        ("DELETE", "/api/v1/groups/{group_name}"): lambda c: c.delete(
            "/api/v1/groups/g1", headers=admin
        ),
        **ticket_scenarios(admin),
        ("POST", "/api/v1/users"): lambda c: c.post(
            "/api/v1/users", json={"username": "ops1", "role": "viewer"}, headers=admin
        ),
        ("PATCH", "/api/v1/users/{username}"): lambda c: c.patch(
            "/api/v1/users/ops1", json={"role": "operator"}, headers=admin
        ),
        ("POST", "/api/v1/users/{username}/logout"): lambda c: c.post(
            "/api/v1/users/ops1/logout", headers=admin
        ),
    }
    try:
        with TestClient(app) as client:
            mutating = [
                r for r in route_table(app) if r[0] in MUTATING and r not in READ_ONLY_POSTS
            ]
            missing = [r for r in mutating if r not in scenarios]
            assert not missing, f"mutating routes without an audit scenario: {missing}"
            assert set(scenarios) == set(mutating), "scenarios for routes that do not exist"
            for route in scenarios:
                with sessions() as s:
                    before = s.execute(select(func.count()).select_from(AuditEntry)).scalar_one()
                response = scenarios[route](client)
                assert response.status_code < 300, (route, response.text)
                with sessions() as s:
                    rows = (
                        s.execute(
                            select(AuditEntry).where(AuditEntry.id > 0).order_by(AuditEntry.id)
                        )
                        .scalars()
                        .all()
                    )
                new = rows[before:]
                assert new, f"{route} wrote no audit row"
                entry = new[-1]
                assert entry.request_id == "req-audit-1", route
                assert entry.actor in ("test-admin", "device:pi-a1"), route
                assert entry.after is not None or entry.before is not None, route
            # The log itself is readable through the API.
            body = client.get("/api/v1/audit", headers=admin).json()
            assert body["total"] >= len(mutating)
            patch = client.get(
                "/api/v1/audit", params={"action": "device.update"}, headers=admin
            ).json()["items"][0]
            assert patch["before"]["region"] is None
            assert patch["after"]["region"] == "eu"
    finally:
        dev.loop_stop()
        dev.disconnect()
        publisher.close()
