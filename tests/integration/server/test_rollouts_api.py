"""The rollout API as operators use it: dry-run, create, start, act, status, explain, and
the audit trail, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import select

from fleet_server.db.models import AuditEntry
from tests.support.sim_fleet import add_bundle, register_fleet


def _auth(tokens: dict[str, str], role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def test_rollout_lifecycle_through_the_api(api, sessions) -> None:
    client, tokens, _clock = api
    register_fleet(sessions, 80, revisions={"rev-a": 0.6, "rev-b": 0.3, "rev-z": 0.1})
    bundle = add_bundle(sessions, "3.0.0", revisions=["rev-a", "rev-b"])
    ops = _auth(tokens, "operator")
    body = {
        "name": "spring",
        "bundle": bundle,
        "selector": {"model": "edge-1"},
        "policy": {"bake_s": 60},
    }

    plan = client.post("/api/v1/rollouts/dry-run", json=body, headers=_auth(tokens, "viewer"))
    assert plan.status_code == 200, plan.text
    preview = plan.json()
    assert preview["excluded_by_reason"].keys() == {"incompatible"}
    assert sum(w["size"] for w in preview["waves"]) == preview["targeted"]
    assert set(preview["waves"][0]["hardware_revisions"]) == {"rev-a", "rev-b"}

    bad = client.post("/api/v1/rollouts", json={**body, "policy": {"min_sample": 0}}, headers=ops)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_policy"
    assert (
        client.post("/api/v1/rollouts", json=body, headers=_auth(tokens, "technician")).status_code
        == 403
    )

    created = client.post("/api/v1/rollouts", json=body, headers=ops)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    assert created.json()["state"] == "draft"

    started = client.post(f"/api/v1/rollouts/{rollout_id}/start", headers=ops)
    assert started.status_code == 200, started.text
    status = started.json()
    assert status["state"] == "running"
    assert (
        sum(sum(v for k, v in w.items() if k != "wave") for w in status["waves"])
        == preview["targeted"]
    )
    assert "hardware_revision=rev-a" in status["strata"]

    assert client.post(f"/api/v1/rollouts/{rollout_id}/start", headers=ops).status_code == 409
    paused = client.post(
        f"/api/v1/rollouts/{rollout_id}/pause", json={"reason": "lunch"}, headers=ops
    )
    assert paused.json()["state"] == "paused"
    again = client.post(f"/api/v1/rollouts/{rollout_id}/pause", headers=ops)
    assert again.status_code == 409
    assert "cannot pause" in again.json()["error"]["message"]
    assert (
        client.post(f"/api/v1/rollouts/{rollout_id}/resume", headers=ops).json()["state"]
        == "running"
    )

    why = client.get("/api/v1/rollouts/explain/sim-00001", headers=_auth(tokens, "viewer")).json()
    assert why["rollouts"][0]["rollout_id"] == rollout_id
    assert why["rollouts"][0]["verdict"]

    history = client.get(f"/api/v1/rollouts/{rollout_id}/events", headers=ops).json()["items"]
    assert [e["kind"] for e in history][:4] == ["created", "start", "pause", "resume"]
    cancelled = client.post(
        f"/api/v1/rollouts/{rollout_id}/cancel", json={"reason": "done"}, headers=ops
    )
    assert cancelled.json()["state"] == "cancelled"
    listed = client.get("/api/v1/rollouts", headers=_auth(tokens, "viewer")).json()
    assert listed["items"][0]["id"] == rollout_id

    with sessions() as session:
        actions = set(
            session.execute(
                select(AuditEntry.action).where(AuditEntry.target_id == rollout_id)
            ).scalars()
        )
    assert {
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.resume",
        "rollout.cancel",
    } <= actions
