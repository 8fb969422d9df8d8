"""RMA and parts through the API: the RMA lifecycle with illegal moves rejected, part
genealogy (installations, hours, repairs), refurbished parts back to stock and reused,
and the reused-vs-new reliability comparison."""

from __future__ import annotations

from sqlalchemy import select

from fleet_server.db.models import AuditEntry


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_rma_lifecycle_part_genealogy_and_reuse(api, sessions) -> None:
    client, tokens, clock = api
    op, viewer = _h(tokens["operator"]), _h(tokens["viewer"])
    for dev in ("pi-r1", "pi-r2"):
        assert (
            client.post("/api/v1/devices", json={"device_id": dev}, headers=op).status_code == 201
        )
    for serial in ("FAN-1", "FAN-2"):
        r = client.post("/api/v1/parts", json={"serial": serial, "kind": "fan"}, headers=op)
        assert r.status_code == 201
        assert r.json()["stock_state"] == "in_stock"
    dup = client.post("/api/v1/parts", json={"serial": "FAN-1", "kind": "fan"}, headers=op)
    assert dup.status_code == 409
    assert (
        client.post(
            "/api/v1/parts/FAN-1/install", json={"device_id": "pi-r1"}, headers=op
        ).status_code
        == 200
    )
    assert (
        client.post(
            "/api/v1/parts/FAN-2/install", json={"device_id": "pi-r2"}, headers=op
        ).status_code
        == 200
    )
    again = client.post("/api/v1/parts/FAN-1/install", json={"device_id": "pi-r2"}, headers=op)
    assert again.status_code == 409
    assert again.json()["error"]["details"]["allowed"] == ["returned"]

    clock.advance(1000 * 3600)
    rma = client.post(
        "/api/v1/rmas", json={"part_serial": "FAN-1", "note": "fan noisy"}, headers=op
    )
    assert rma.status_code == 201
    rma_id = rma.json()["id"]
    assert rma.json()["device_id"] == "pi-r1"
    assert rma.json()["allowed_next"] == ["approved", "rejected"]

    def move(state: str, note: str = "") -> object:
        return client.post(
            f"/api/v1/rmas/{rma_id}/transition",
            json={"state": state, "note": note},
            headers={**op, "X-Request-ID": f"req-rma-{state}"},
        )

    skipped = move("returned")
    assert skipped.status_code == 409
    assert skipped.json()["error"]["details"] == {
        "current": "claimed",
        "wanted": "returned",
        "allowed": ["approved", "rejected"],
    }
    assert move("bogus").status_code == 409
    for state in ("approved", "returned", "inspected"):
        assert move(state).status_code == 200, state
    part = client.get("/api/v1/parts/FAN-1", headers=viewer).json()
    assert part["stock_state"] == "returned"
    assert part["installed_on"] is None
    assert part["hours_in_service"] == 1000.0
    assert part["installations"][0]["failed"] is True
    assert move("refurbished", "bearing replaced").status_code == 200
    assert move("scrapped").status_code == 409  # final
    part = client.get("/api/v1/parts/FAN-1", headers=viewer).json()
    assert (part["condition"], part["stock_state"]) == ("refurbished", "in_stock")
    assert part["repairs"][0]["note"] == "bearing replaced"
    history = client.get(f"/api/v1/rmas/{rma_id}", headers=viewer).json()["history"]
    assert [h["state"] for h in history] == [
        "claimed",
        "approved",
        "returned",
        "inspected",
        "refurbished",
    ]

    # The refurbished part is reused in another device: tracked as reuse.
    assert (
        client.post(
            "/api/v1/parts/FAN-1/install", json={"device_id": "pi-r2"}, headers=op
        ).status_code
        == 200
    )
    clock.advance(500 * 3600)
    part = client.get("/api/v1/parts/FAN-1", headers=viewer).json()
    assert part["reuse_count"] == 1
    assert part["installed_on"] == "pi-r2"
    assert part["hours_in_service"] == 1500.0
    stock = client.get("/api/v1/parts", params={"stock_state": "installed"}, headers=viewer).json()
    assert stock["total"] == 2

    rel = client.get(
        "/api/v1/analytics/parts-reliability", params={"kind": "fan"}, headers=viewer
    ).json()
    new, refurb = rel["by_condition"]["new"], rel["by_condition"]["refurbished"]
    assert (new["installations"], new["failures"], new["hours"]) == (2, 1, 2500.0)
    assert (refurb["installations"], refurb["failures"], refurb["hours"]) == (1, 0, 500.0)
    assert new["rate_per_1000h"] == 0.4
    assert new["ci95"][0] < 0.4 < new["ci95"][1]

    # An RMA from a claim; a rejected one is final; scrapping retires the part.
    claim = client.post(
        "/api/v1/claims",
        json={
            "device": "pi-r2",
            "failure_mode": "fan_failure",
            "failure_date": "2026-09-01",
            "part_serial": "FAN-2",
        },
        headers=op,
    ).json()
    r2 = client.post("/api/v1/rmas", json={"claim_id": claim["id"]}, headers=op).json()
    assert (r2["device_id"], r2["part_serial"]) == ("pi-r2", "FAN-2")
    for state in ("approved", "returned", "inspected", "scrapped"):
        assert (
            client.post(
                f"/api/v1/rmas/{r2['id']}/transition", json={"state": state}, headers=op
            ).status_code
            == 200
        )
    assert client.get("/api/v1/parts/FAN-2", headers=viewer).json()["stock_state"] == "scrapped"
    assert client.post("/api/v1/rmas", json={}, headers=op).status_code == 422
    assert client.post("/api/v1/rmas", json={"claim_id": 999}, headers=op).status_code == 404
    assert (
        client.get("/api/v1/rmas", params={"state": "scrapped"}, headers=viewer).json()["total"]
        == 1
    )
    with sessions() as s:
        entry = s.execute(
            select(AuditEntry).where(AuditEntry.request_id == "req-rma-inspected")
        ).scalar_one()
    assert entry.action == "rma.inspected"
    assert entry.before["state"] == "returned"
    assert entry.after["state"] == "inspected"


def test_fleetctl_claim_and_rma_commands(sessions, db_url) -> None:
    """fleetctl against a live server: file a claim (checks printed), open and move an
    RMA, an illegal move is a clear error, part genealogy."""
    import json

    import httpx
    from typer.testing import CliRunner

    from fleet_server.api import create_app
    from fleet_server.fleetctl.cli import app as ctl
    from tests.server_fixtures import FakeClock, make_tokens, serve, settings_for

    live = serve(create_app(settings_for(db_url), sessions=sessions, clock=FakeClock()))
    try:
        tokens = make_tokens(sessions)
        httpx.post(
            f"{live.url}/api/v1/devices",
            json={"device_id": "pi-k1"},
            headers=_h(tokens["operator"]),
        ).raise_for_status()
        runner = CliRunner()
        base = ["--url", live.url, "--token", tokens["operator"]]

        def ok(*args: str) -> str:
            result = runner.invoke(ctl, [*base, *args])
            assert result.exit_code == 0, result.output
            return result.output

        claim = ok("claim", "file", "pi-k1", "fan_failure", "2026-09-01", "--part", "FAN-K")
        assert "device_active" in claim
        assert "never activated" in claim
        claim_id = int(claim.split()[1])  # "claim <id> filed for pi-k1 (...)"
        shown_claim = ok("claim", "show", str(claim_id))
        assert f"claim {claim_id}: pi-k1 fan_failure" in shown_claim
        assert "never activated" in shown_claim
        ok("rma", "part-add", "FAN-K", "fan")
        ok("rma", "part-install", "FAN-K", "pi-k1")
        opened = json.loads(ok("rma", "open", "--part", "FAN-K", "--json"))
        assert opened["state"] == "claimed"
        bad = runner.invoke(ctl, [*base, "rma", "move", str(opened["id"]), "inspected"])
        assert bad.exit_code != 0
        assert "allowed: approved, rejected" in str(bad.exception)
        ok("rma", "move", str(opened["id"]), "approved")
        ok("rma", "move", str(opened["id"]), "returned")
        shown = json.loads(ok("rma", "part-show", "FAN-K", "--json"))
        assert shown["stock_state"] == "returned"
        assert shown["installations"][0]["failed"] is True
        listed = json.loads(ok("claim", "list", "--json"))["items"]
        assert listed[0]["failure_mode"] == "fan_failure"
    finally:
        live.stop()
