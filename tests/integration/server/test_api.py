"""The REST API as ops staff and devices use it: registry import and filters, pagination,
error bodies, decommissioning, alarms and fleet views, commands and diagnostics."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

import protocol as p
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.api import create_app
from fleet_server.services.ingest import BatchWriter, Inbound
from tests.server_fixtures import FakeClock, make_tokens, settings_for

HEADER = (
    "device_id,serial,model,hw_revision,batch,production_date,activation_date,"
    "region,owner,channel,tags\n"
)
CSV = (
    HEADER
    + """pi-001,SN001,thermo-1,rev-a,lot-7,2026-01-10,2026-02-01,eu,acme,production,kitchen;beta
pi-002,SN002,thermo-1,rev-b,lot-7,2026-01-11,,us,acme,pre-production,kitchen
pi-003,SN003,thermo-2,rev-a,lot-8,2026-03-01,,eu,,production,
"""
)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _import(client: TestClient, token: str, text: str) -> Any:
    return client.post(
        "/api/v1/devices/import",
        content=text.encode(),
        headers={**_h(token), "Content-Type": "text/csv"},
    )


def test_csv_import_is_all_or_nothing_with_per_row_errors(api) -> None:
    client, tokens, _clock = api
    bad = CSV + "pi-004,SN001,thermo-1,rev-a,lot-9,2026-13-01,,eu,,factory,\nbad id!,,,,,,,,,,\n"
    r = _import(client, tokens["operator"], bad)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_csv"
    problems = {(d["line"], d["column"]) for d in err["details"]}
    assert (5, "production_date") in problems
    assert (5, "channel") in problems
    assert (6, "device_id") in problems
    assert client.get("/api/v1/devices", headers=_h(tokens["viewer"])).json()["total"] == 0
    assert _import(client, tokens["operator"], CSV).json() == {"imported": 3}
    again = _import(client, tokens["operator"], CSV)  # already registered: nothing added
    assert again.status_code == 422
    assert "already registered" in again.json()["error"]["details"][0]["message"]
    assert client.get("/api/v1/devices", headers=_h(tokens["viewer"])).json()["total"] == 3


def test_filters_pagination_and_error_bodies(api) -> None:
    client, tokens, _clock = api
    _import(client, tokens["admin"], CSV)
    v = _h(tokens["viewer"])

    def ids(**params: Any) -> list[str]:
        body = client.get("/api/v1/devices", params=params, headers=v).json()
        return [d["device_id"] for d in body["items"]]

    assert ids(model="thermo-1") == ["pi-001", "pi-002"]
    assert ids(batch="lot-8") == ["pi-003"]
    assert ids(region="eu", hw_revision="rev-a") == ["pi-001", "pi-003"]
    assert ids(channel="pre-production") == ["pi-002"]
    assert ids(tag=["kitchen", "beta"]) == ["pi-001"]
    assert ids(produced_from="2026-01-11") == ["pi-002", "pi-003"]
    assert ids(activated_to="2026-02-28") == ["pi-001"]
    assert ids(owner="acme", presence="unknown") == ["pi-001", "pi-002"]
    assert ids(has_open_faults=True) == []
    first = client.get("/api/v1/devices", params={"limit": 2}, headers=v).json()
    assert [d["device_id"] for d in first["items"]] == ["pi-001", "pi-002"]
    assert first["total"] == 3
    second = client.get(
        "/api/v1/devices", params={"limit": 2, "cursor": first["next_cursor"]}, headers=v
    ).json()
    assert [d["device_id"] for d in second["items"]] == ["pi-003"]
    assert second["next_cursor"] is None
    for path, params, status, code in [
        ("/api/v1/devices/nope", {}, 404, "not_found"),
        ("/api/v1/devices", {"limit": 5000}, 422, "validation_error"),
        ("/api/v1/devices", {"cursor": "garbage"}, 422, "validation_error"),
        ("/api/v1/devices", {"presence": "sideways"}, 422, "validation_error"),
        ("/api/v1/fleet/fault-rates", {"by": "colour"}, 422, "validation_error"),
        ("/api/v1/no-such-thing", {}, 404, "not_found"),
    ]:
        r = client.get(path, params=params, headers=v)
        assert r.status_code == status, path
        body = r.json()
        assert set(body) == {"error"}
        assert body["error"]["code"] == code
        assert body["error"]["message"]


def test_openapi_schema_documents_every_route(api) -> None:
    client, _tokens, _clock = api
    schema = client.get("/openapi.json").json()
    assert "/api/v1/devices/{device_id}/commands" in schema["paths"]
    assert "ErrorBody" in schema["components"]["schemas"]
    get_devices = schema["paths"]["/api/v1/devices"]["get"]
    assert {"limit", "cursor", "model", "batch", "tag"} <= {
        p["name"] for p in get_devices["parameters"]
    }


def test_decommissioned_devices_are_rejected_by_ingest(api, sessions) -> None:
    client, tokens, clock = api
    _import(client, tokens["admin"], CSV)
    r = client.post(
        "/api/v1/devices/pi-002/decommission",
        json={"reason": "returned"},
        headers=_h(tokens["operator"]),
    )
    assert r.json()["status"] == "decommissioned"
    assert (
        client.post(
            "/api/v1/devices/pi-002/decommission", headers=_h(tokens["operator"])
        ).status_code
        == 409
    )
    msg = p.Telemetry(
        device_id="pi-002", boot_id="b", seq=1, ts=clock.now, samples=[p.Sample(ts=clock.now)]
    )
    result = BatchWriter(sessions).write(
        [Inbound(p.topic("pi-002", p.Kind.TELEMETRY), p.encode(msg), clock.now)]
    )
    assert result.rejected == {"decommissioned": 1}


def test_alarms_and_fault_rates(api, sessions) -> None:
    client, tokens, clock = api
    _import(client, tokens["admin"], CSV)
    writer = BatchWriter(sessions)

    def ev(msg: p.Event) -> Inbound:
        return Inbound(p.topic(msg.device_id, p.Kind.EVENT), p.encode(msg), clock.now)

    boot = p.Boot(
        device_id="pi-001",
        boot_id="b",
        seq=1,
        ts=clock.now,
        reason=5,
        agent_version="0.1.0",
        software_version="1.2.0",
        slot="a",
    )
    fault = p.FaultRaised(
        device_id="pi-001",
        boot_id="b",
        seq=2,
        ts=clock.now,
        code="overheat",
        severity=p.Severity.CRITICAL,
        value=91.0,
        threshold=85.0,
    )
    writer.write([ev(boot), ev(fault)])
    v = _h(tokens["viewer"])
    alarms = client.get("/api/v1/alarms", headers=v).json()
    assert alarms["total"] == 1
    alarm = alarms["items"][0]
    assert (alarm["device_id"], alarm["code"], alarm["severity"]) == (
        "pi-001",
        "overheat",
        "critical",
    )
    device = client.get("/api/v1/devices/pi-001", headers=v).json()
    assert (device["software_version"], device["slot"], device["open_faults"]) == ("1.2.0", "a", 1)
    rates = client.get("/api/v1/fleet/fault-rates", params={"by": "model"}, headers=v).json()
    by_model = {r["value"]: r for r in rates["rows"]}
    assert by_model["thermo-1"]["faulty_devices"] == 1
    assert by_model["thermo-1"]["fault_rate"] == 0.5
    assert by_model["thermo-2"]["fault_rate"] == 0.0
    by_version = client.get(
        "/api/v1/fleet/fault-rates", params={"by": "software_version"}, headers=v
    ).json()["rows"]
    assert {r["value"]: r["alarms"] for r in by_version}["1.2.0"] == 1
    assert client.post(f"/api/v1/alarms/{alarm['id']}/ack", headers=v).status_code == 403
    acked = client.post(f"/api/v1/alarms/{alarm['id']}/ack", headers=_h(tokens["operator"]))
    assert acked.json()["acked_by"] == "test-operator (operator)"
    summary = client.get("/api/v1/fleet/summary", headers=v).json()
    assert summary["open_alarms_by_severity"] == {"critical": 1}
    metrics = client.get("/metrics").text
    assert 'fleet_open_alarms{severity="critical"} 1.0' in metrics


@pytest.mark.mosquitto
def test_diagnostics_round_trip_and_command_acks(mosquitto, sessions, db_url) -> None:
    publisher = PahoPublisher(mosquitto.host, mosquitto.port)
    assert publisher.wait_connected(10)
    clock = FakeClock()
    settings = settings_for(db_url, diagnostics={"max_bytes": 4096})
    app = create_app(settings, sessions=sessions, publisher=publisher, clock=clock)
    tokens = make_tokens(sessions)
    received: list[bytes] = []
    got = threading.Event()
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pi-d", protocol=mqtt.MQTTv5)
    dev.on_message = lambda _c, _u, m: (received.append(m.payload), got.set())
    dev.connect(mosquitto.host, mosquitto.port)
    dev.subscribe(p.topic("pi-d", p.Kind.COMMAND), qos=1)
    dev.loop_start()
    try:
        with TestClient(app) as client:
            tech = _h(tokens["technician"])
            client.post("/api/v1/devices", json={"device_id": "pi-d"}, headers=_h(tokens["admin"]))
            sent = client.post(
                "/api/v1/devices/pi-d/commands", json={"kind": "collect_diagnostics"}, headers=tech
            )
            assert sent.status_code == 202
            assert sent.json()["status"] == "sent"
            assert got.wait(10)
            cmd = p.decode(p.topic("pi-d", p.Kind.COMMAND), received[0])
            assert isinstance(cmd, p.CollectDiagnostics)
            assert cmd.id == sent.json()["id"]
            path = "/" + cmd.upload_url.split("://", 1)[1].split("/", 1)[1]
            too_big = client.post(path, content=b"x" * 5000)
            assert too_big.status_code == 413
            assert client.post(path, content=b"bundle-bytes").status_code == 201
            assert client.post(path, content=b"again").status_code == 410  # one-time
            assert client.post(path[:-3] + "zzz", content=b"x").status_code == 404
            listed = client.get("/api/v1/devices/pi-d/diagnostics", headers=tech).json()
            bundle = listed["items"][0]
            assert bundle["size"] == len(b"bundle-bytes")
            blob = client.get(f"/api/v1/diagnostics/{bundle['id']}", headers=tech)
            assert blob.content == b"bundle-bytes"
            viewer = client.get(f"/api/v1/diagnostics/{bundle['id']}", headers=_h(tokens["viewer"]))
            assert viewer.status_code == 403
            # The device acknowledges the command; the row follows.
            ack = p.CommandAck(
                device_id="pi-d",
                boot_id="b",
                seq=9,
                ts=clock.now,
                command_id=cmd.id,
                status=p.AckStatus.COMPLETED,
            )
            BatchWriter(sessions).write(
                [Inbound(p.topic("pi-d", p.Kind.EVENT), p.encode(ack), clock.now)]
            )
            rows = client.get("/api/v1/devices/pi-d/commands", headers=tech).json()["items"]
            assert rows[0]["status"] == "completed"
    finally:
        dev.loop_stop()
        dev.disconnect()
        publisher.close()


def test_metrics_and_health_need_no_token(api) -> None:
    client, _tokens, _clock = api
    assert client.get("/healthz").json()["status"] == "ok"
    text = client.get("/metrics").text
    assert "fleet_devices" in text
