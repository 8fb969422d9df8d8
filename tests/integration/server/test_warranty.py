"""Warranty claims through the API: coverage rules, automatic checks shown to the
reviewer (never a silent rejection), alarm and telemetry evidence, decisions, audit."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update

import protocol as p
from fleet_server.db.models import AuditEntry, Device
from fleet_server.services.ingest import BatchWriter, Inbound


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _ts(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()


def test_claim_checks_evidence_and_decision(api, sessions) -> None:
    client, tokens, clock = api
    op, viewer = _h(tokens["operator"]), _h(tokens["viewer"])
    clock.now = _ts("2026-06-01T00:00:00")
    for dev, region, act in (("pi-w1", "eu", "2025-06-15"), ("pi-w2", "us", "2024-01-10")):
        body = {
            "device_id": dev,
            "serial": f"S-{dev}",
            "model": "thermo-1",
            "region": region,
            "activation_date": act,
        }
        assert client.post("/api/v1/devices", json=body, headers=op).status_code == 201
    rule = {"model": "thermo-1", "region": "*", "months": 24, "covers": ["fan_failure", "fan"]}
    assert client.put("/api/v1/warranty/rules", json=rule, headers=viewer).status_code == 403
    assert client.put("/api/v1/warranty/rules", json=rule, headers=op).status_code == 200
    eu = {**rule, "region": "us", "months": 12}
    assert client.put("/api/v1/warranty/rules", json=eu, headers=op).json()["months"] == 12
    assert len(client.get("/api/v1/warranty/rules", headers=viewer).json()["items"]) == 2

    # The device raised the fault the claim names, days before the failure, with telemetry.
    fault_ts = _ts("2026-05-20T10:00:00")
    batch = [
        Inbound(
            p.topic("pi-w1", p.Kind.EVENT),
            p.encode(
                p.FaultRaised(
                    device_id="pi-w1",
                    boot_id="b",
                    seq=1,
                    ts=fault_ts,
                    code="fan_failure",
                    severity=p.Severity.MAJOR,
                )
            ),
            fault_ts,
        ),
        Inbound(
            p.topic("pi-w1", p.Kind.TELEMETRY),
            p.encode(
                p.Telemetry(
                    device_id="pi-w1",
                    boot_id="b",
                    seq=2,
                    ts=fault_ts + 60,
                    samples=[p.Sample(ts=fault_ts + 60, temp_c=91.5)],
                )
            ),
            fault_ts + 60,
        ),
    ]
    BatchWriter(sessions, auto_register=False).write(batch)
    # the claimed part is in the parts registry, installed on the device
    part = {"serial": "FAN-1", "kind": "fan"}
    assert client.post("/api/v1/parts", json=part, headers=op).status_code == 201
    install = {"device_id": "pi-w1"}
    assert client.post("/api/v1/parts/FAN-1/install", json=install, headers=op).status_code < 300

    good = client.post(
        "/api/v1/claims",
        json={
            "device": "S-pi-w1",
            "failure_mode": "fan_failure",
            "failure_date": "2026-05-25",
            "part_kind": "fan",
            "part_serial": "FAN-1",
        },
        headers={**op, "X-Request-ID": "req-claim-1"},
    )
    assert good.status_code == 201, good.text
    claim = good.json()
    assert claim["device_id"] == "pi-w1"
    assert claim["checks_passed"], claim["checks"]
    assert {c["name"] for c in claim["checks"]} >= {
        "device_exists",
        "device_active",
        "in_coverage",
        "failure_covered",
        "telemetry_evidence",
        "part_registered",
    }
    detail = client.get(f"/api/v1/claims/{claim['id']}", headers=viewer).json()
    assert len(detail["evidence"]["alarm_ids"]) == 1
    assert detail["evidence"]["alarms_url"] == "/api/v1/devices/pi-w1/alarms"
    assert detail["telemetry_summary"]["max_temp_c"] == 91.5

    # Out of coverage (us rule: 12 months), not covered, no evidence: stored, not rejected.
    weak = client.post(
        "/api/v1/claims",
        json={"device": "pi-w2", "failure_mode": "psu_failure", "failure_date": "2026-05-01"},
        headers=op,
    ).json()
    assert weak["state"] == "submitted"
    failed = {c["name"]: c["detail"] for c in weak["checks"] if not c["passed"]}
    assert set(failed) == {"in_coverage", "failure_covered", "telemetry_evidence"}
    assert "12 months" in failed["in_coverage"]
    unknown = client.post(
        "/api/v1/claims",
        json={"device": "nobody", "failure_mode": "fan_failure", "failure_date": "2026-05-01"},
        headers=op,
    ).json()
    assert unknown["device_id"] is None
    assert unknown["checks"][0] == {
        "name": "device_exists",
        "passed": False,
        "detail": "no device with id or serial 'nobody'",
    }
    # Alarms that arrive later (a device that was offline) are picked up by a recheck.
    late_ts = _ts("2026-04-28T08:00:00")
    BatchWriter(sessions, auto_register=False).write(
        [
            Inbound(
                p.topic("pi-w2", p.Kind.EVENT),
                p.encode(
                    p.FaultRaised(
                        device_id="pi-w2",
                        boot_id="b",
                        seq=1,
                        ts=late_ts,
                        code="psu_failure",
                        severity=p.Severity.MAJOR,
                    )
                ),
                late_ts,
            )
        ]
    )
    rechecked = client.post(f"/api/v1/claims/{weak['id']}/recheck", headers=op).json()
    evidence = next(c for c in rechecked["checks"] if c["name"] == "telemetry_evidence")
    assert evidence["passed"]
    assert len(rechecked["evidence"]["alarm_ids"]) == 1
    assert rechecked["state"] == "submitted"

    # A device decommissioned before the failure was not active.
    with sessions() as s, s.begin():
        s.execute(
            update(Device)
            .where(Device.device_id == "pi-w1")
            .values(status="decommissioned", decommissioned_at=_ts("2026-05-01T00:00:00"))
        )
    late = client.post(
        "/api/v1/claims",
        json={"device": "pi-w1", "failure_mode": "fan_failure", "failure_date": "2026-05-25"},
        headers=op,
    ).json()
    active = next(c for c in late["checks"] if c["name"] == "device_active")
    assert not active["passed"]
    assert "decommissioned" in active["detail"]

    # Reviewer decisions; a decided claim cannot be decided again.
    listed = client.get("/api/v1/claims", params={"state": "submitted"}, headers=viewer).json()
    assert listed["total"] == 4
    no_note = client.post(
        f"/api/v1/claims/{weak['id']}/decision", json={"decision": "rejected"}, headers=op
    )
    assert no_note.status_code == 422
    rej = client.post(
        f"/api/v1/claims/{weak['id']}/decision",
        json={"decision": "rejected", "note": "out of coverage"},
        headers=op,
    )
    assert rej.json()["state"] == "rejected"
    assert rej.json()["decided_by"] == "test-operator (operator)"
    twice = client.post(
        f"/api/v1/claims/{weak['id']}/decision",
        json={"decision": "approved", "note": "changed my mind"},
        headers=op,
    )
    assert twice.status_code == 409
    assert "final state" in twice.json()["error"]["message"]
    bad_date = client.post(
        "/api/v1/claims",
        json={"device": "pi-w1", "failure_mode": "x", "failure_date": "yesterday"},
        headers=op,
    )
    assert bad_date.status_code == 422
    assert client.get("/api/v1/claims/999", headers=viewer).status_code == 404
    with sessions() as s:
        entry = s.execute(
            select(AuditEntry).where(AuditEntry.request_id == "req-claim-1")
        ).scalar_one()
        actions = set(s.execute(select(AuditEntry.action)).scalars())
    assert entry.action == "claim.create"
    assert entry.after["checks_passed"] is True
    assert {"warranty.rule", "claim.create", "claim.recheck", "claim.reject"} <= actions


def test_claim_finds_evidence_through_the_failure_mode_mapping(api, sessions) -> None:
    """A claim for ``fan_failure`` finds the ``fan_stopped`` alarm the agent really raises
    (``[warranty] failure_mode_alarms``; the default maps one to the other)."""
    client, tokens, clock = api
    op = _h(tokens["operator"])
    clock.now = _ts("2026-06-01T00:00:00")
    body = {"device_id": "pi-m1", "serial": "S-pi-m1", "model": "thermo-1", "region": "eu"}
    body["activation_date"] = "2025-06-15"
    assert client.post("/api/v1/devices", json=body, headers=op).status_code == 201
    fault_ts = _ts("2026-05-20T10:00:00")
    fault = p.FaultRaised(
        device_id="pi-m1",
        boot_id="b",
        seq=1,
        ts=fault_ts,
        code="fan_stopped",
        severity=p.Severity.MAJOR,
    )
    BatchWriter(sessions, auto_register=False).write(
        [Inbound(p.topic("pi-m1", p.Kind.EVENT), p.encode(fault), fault_ts)]
    )
    filed = client.post(
        "/api/v1/claims",
        json={"device": "pi-m1", "failure_mode": "fan_failure", "failure_date": "2026-05-25"},
        headers=op,
    )
    assert filed.status_code == 201, filed.text
    detail = client.get(f"/api/v1/claims/{filed.json()['id']}", headers=op).json()
    assert len(detail["evidence"]["alarm_ids"]) == 1
    assert detail["evidence"]["alarm_codes"] == ["fan_failure", "fan_stopped"]
    evidence = next(c for c in detail["checks"] if c["name"] == "telemetry_evidence")
    assert evidence["passed"], detail["checks"]


def test_activation_date_set_on_first_contact_when_the_registry_has_none(api, sessions) -> None:
    """``[registry] activate_on_first_contact``: the first message sets the activation day;
    a registry value is kept; with the setting off nothing changes."""
    client, tokens, _clock = api
    op = _h(tokens["operator"])
    for dev, act in (("pi-a1", None), ("pi-a2", "2025-01-02"), ("pi-a3", None)):
        body = {"device_id": dev, "serial": f"S-{dev}", "model": "thermo-1"}
        if act:
            body["activation_date"] = act
        assert client.post("/api/v1/devices", json=body, headers=op).status_code == 201
    ts = _ts("2026-03-04T23:30:00")

    def hello(dev: str) -> Inbound:
        msg = p.Telemetry(device_id=dev, boot_id="b", seq=1, ts=ts, samples=[p.Sample(ts=ts)])
        return Inbound(p.topic(dev, p.Kind.TELEMETRY), p.encode(msg), ts)

    BatchWriter(sessions, activate_on_first_contact=True).write([hello("pi-a1"), hello("pi-a2")])
    BatchWriter(sessions).write([hello("pi-a3")])

    def activation(dev: str) -> str | None:
        return client.get(f"/api/v1/devices/{dev}", headers=op).json()["activation_date"]

    assert activation("pi-a1") == "2026-03-04"
    assert activation("pi-a2") == "2025-01-02"
    assert activation("pi-a3") is None


def test_claimed_part_is_checked_against_the_parts_registry(api, sessions) -> None:
    """Unknown part, wrong kind, or a part that was never in the claimed device: the
    ``part_registered`` check fails with the reason (the claim is still filed)."""
    client, tokens, clock = api
    op = _h(tokens["operator"])
    clock.now = _ts("2026-06-01T00:00:00")
    for dev in ("pi-p1", "pi-p2"):
        body = {"device_id": dev, "serial": f"S-{dev}", "model": "thermo-1"}
        assert client.post("/api/v1/devices", json=body, headers=op).status_code == 201
    part = {"serial": "FAN-9", "kind": "fan"}
    assert client.post("/api/v1/parts", json=part, headers=op).status_code == 201
    install = {"device_id": "pi-p2"}
    assert client.post("/api/v1/parts/FAN-9/install", json=install, headers=op).status_code < 300

    def part_check(device: str, serial: str, kind: str) -> dict[str, object]:
        claim = {
            "device": device,
            "failure_mode": "fan_failure",
            "failure_date": "2026-05-25",
            "part_kind": kind,
            "part_serial": serial,
        }
        filed = client.post("/api/v1/claims", json=claim, headers=op)
        assert filed.status_code == 201, filed.text
        return next(c for c in filed.json()["checks"] if c["name"] == "part_registered")

    assert "not in the parts registry" in str(part_check("pi-p1", "FAN-404", "fan")["detail"])
    wrong_kind = part_check("pi-p2", "FAN-9", "psu")
    assert not wrong_kind["passed"]
    assert "is a fan" in str(wrong_kind["detail"])
    elsewhere = part_check("pi-p1", "FAN-9", "fan")
    assert not elsewhere["passed"]
    assert "pi-p2" in str(elsewhere["detail"])
    assert part_check("pi-p2", "FAN-9", "fan")["passed"]
