"""Support tickets through the API and the services: the lifecycle with its events and
audit, comments and links, the SLA tick on a schedule (warnings, breach, signed webhooks
with a retry), tickets opened by rule, and the all-or-none helpdesk importer. Time is
chosen by the test; no sleeps."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import protocol as p
from fleet_server.config import SupportSettings, WebhookSettings
from fleet_server.db.models import AuditEntry
from fleet_server.db.ticket_models import Ticket, TicketEvent
from fleet_server.domain import webhooks as rules
from fleet_server.services import sla, ticket_rules, tickets, webhooks
from fleet_server.services.audit import SYSTEM
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.paging import PageParams
from fleet_server.services.webhook_delivery import deliver_due
from tests.server_fixtures import settings_for
from tests.support.webhook_receiver import Receiver, start_receiver

DATA = Path(__file__).resolve().parents[2] / "data"
T0 = 1_790_000_000.0
MIN = 60.0


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.stop()


SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
"""Plain ORM work: PostgreSQL adds time, not coverage (the import's COPY, the tick's bulk
writes and the webhook outbox run on both)."""


@SQLITE_ONLY
def test_ticket_lifecycle_comments_links_and_audit(api, sessions) -> None:
    client, tok, _clock = api
    op, tech, viewer = _h(tok["operator"]), _h(tok["technician"]), _h(tok["viewer"])
    assert (
        client.post("/api/v1/devices", json={"device_id": "pi-t1"}, headers=op).status_code == 201
    )
    body = {
        "title": "fan noise",
        "category": "device_hardware",
        "requester": "acme",
        "impact": 1,
        "urgency": 2,
        "links": [{"kind": "device", "ref": "pi-t1"}],
    }
    assert client.post("/api/v1/tickets", json=body, headers=viewer).status_code == 403
    bad = client.post("/api/v1/tickets", json={**body, "category": "weather"}, headers=tech)
    assert bad.status_code == 422
    assert "device_hardware" in bad.json()["error"]["message"]
    missing = {**body, "links": [{"kind": "device", "ref": "pi-nope"}]}
    assert client.post("/api/v1/tickets", json=missing, headers=tech).status_code == 404
    r = client.post("/api/v1/tickets", json=body, headers=tech)
    assert r.status_code == 201
    t = r.json()
    number = t["number"]
    assert (t["priority"], t["state"]) == (2, "new")

    def move(state: str) -> int:
        path = f"/api/v1/tickets/{number}/transition"
        return client.post(path, json={"state": state}, headers=tech).status_code

    assert move("in_progress") == 200
    refused = client.post(
        f"/api/v1/tickets/{number}/transition", json={"state": "closed"}, headers=tech
    )
    assert refused.status_code == 409
    assert "resolved" in refused.json()["error"]["details"]["allowed"]
    path = f"/api/v1/tickets/{number}/comments"
    internal = client.post(path, json={"body": "check fan batch"}, headers=tech)
    public = client.post(path, json={"body": "we are on it", "public": True}, headers=tech)
    assert (internal.status_code, public.status_code) == (201, 201)
    for state in ("pending_customer", "in_progress", "resolved", "reopened", "in_progress"):
        assert move(state) == 200, state
    assert move("resolved") == 200
    assert move("closed") == 200
    late = client.post(path, json={"body": "one more"}, headers=tech)
    assert late.status_code == 409
    as_viewer = client.get(f"/api/v1/tickets/{number}", headers=viewer).json()
    as_tech = client.get(f"/api/v1/tickets/{number}", headers=tech).json()
    assert [c["body"] for c in as_viewer["comments"]] == ["we are on it"]
    assert len(as_tech["comments"]) == 2
    assert as_tech["first_response_at"] is not None
    kinds = [e["kind"] for e in as_tech["events"]]
    assert kinds[:2] == ["created", "link"]
    assert kinds.count("state") == 8
    assert kinds.count("response") == 1
    assert all(e["actor"] for e in as_tech["events"])
    # The device shows its tickets; the ticket shows the device's evidence.
    mine = client.get("/api/v1/devices/pi-t1/tickets", headers=viewer).json()
    assert [x["number"] for x in mine["items"]] == [number]
    timeline = client.get(f"/api/v1/tickets/{number}/timeline", headers=viewer).json()
    assert "pi-t1" in timeline["devices"]
    # Links: duplicate refused, unlink audited.
    link = f"/api/v1/tickets/{number}/links"
    dup = client.post(link, json={"kind": "device", "ref": "pi-t1"}, headers=tech)
    assert dup.status_code == 409
    assert client.delete(f"{link}/device/pi-t1", headers=tech).status_code == 200
    with sessions() as s:
        actions = set(
            s.execute(select(AuditEntry.action).where(AuditEntry.target_id == number)).scalars()
        )
    assert {"ticket.created", "ticket.state", "ticket.response", "ticket.unlink"} <= actions
    patched = client.patch(f"/api/v1/tickets/{number}", json={"impact": 3}, headers=tech)
    assert patched.json()["priority"] == 4


def test_sla_tick_warns_breaches_and_sends_signed_webhooks(sessions, receiver) -> None:
    with sessions() as s:
        created = webhooks.create_subscription(
            s,
            name="support",
            url=receiver.url,
            events=["ticket.sla_warning", "ticket.sla_breached"],
            min_severity=None,
            offline_after_s=None,
            actor=SYSTEM,
            now=T0,
        )
    secret = created["secret"]
    settings = settings_for("sqlite://")
    support = settings.support
    with sessions() as s:
        t = tickets.create_ticket(
            s,
            SYSTEM,
            tickets.NewTicket("gateway down", "cloud_infrastructure", "ops", impact=1, urgency=1),
            support,
            now=T0,
        )
    number = t["number"]
    # p1: first response 30 min, next update 2 h, resolution 4 h (24x7).
    assert not sla.tick(sessions, settings, T0 + 10 * MIN)
    with sessions() as s:
        soon = sla.breaching_within(s, 4 * 3600, PageParams(50, 0), now=T0 + 10 * MIN)
    first = soon.items[0]
    assert (first["number"], first["target"]) == (number, "first_response")
    assert first["sla"] == "breaching in 20 min"
    assert sla.tick(sessions, settings, T0 + 16 * MIN).warnings == 1  # 50 % of 30 min
    assert not sla.tick(sessions, settings, T0 + 17 * MIN)  # reported once
    report = sla.tick(sessions, settings, T0 + 31 * MIN)  # 75 % and the breach at 30 min
    assert (report.warnings, report.breaches) == (1, 1)
    with sessions() as s:
        evs = s.execute(
            select(TicketEvent.kind, TicketEvent.data).where(TicketEvent.kind.like("sla.%"))
        ).all()
    assert [(k, d["threshold"], d["target"]) for k, d in evs] == [
        ("sla.warning", 0.5, "first_response"),
        ("sla.warning", 0.75, "first_response"),
        ("sla.breach", 1.0, "first_response"),
    ]
    assert evs[2][1]["crossed_at"] == T0 + 30 * MIN
    # Delivery: the first attempt gets a 500 and is retried after its backoff.
    receiver.statuses = [500]
    fast = WebhookSettings(base_delay_s=10, max_delay_s=60, max_attempts=5)
    first_run = deliver_due(sessions, T0 + 32 * MIN, settings=fast)
    assert (first_run.delivered, first_run.failed_attempts) == (2, 1)
    assert deliver_due(sessions, T0 + 33 * MIN, settings=fast).delivered == 1
    kinds = []
    for req in receiver.requests[1:]:
        ts = req.headers[rules.TIMESTAMP_HEADER]
        sig = req.headers[rules.SIGNATURE_HEADER]
        assert rules.verify(secret, ts, sig, req.body, now=float(ts))
        kinds.append(json.loads(req.body)["type"])
    assert sorted(kinds) == ["ticket.sla_breached", "ticket.sla_warning", "ticket.sla_warning"]
    # A response stops first response and starts next update; resolving settles it.
    with sessions() as s:
        tickets.add_comment(s, SYSTEM, number, "looking", public=True, now=T0 + 40 * MIN)
        tickets.transition(s, SYSTEM, number, "resolved", now=T0 + 50 * MIN)
    sla.tick(sessions, settings, T0 + 60 * MIN)
    with sessions() as s:
        view = sla.ticket_sla(s, number, support, T0 + 60 * MIN)
    states = {c["target"]: (c["state"], c["breached"]) for c in view["targets"]}
    assert states == {
        "first_response": ("stopped", True),
        "next_update": ("stopped", False),
        "resolution": ("stopped", False),
    }
    # Settled tickets leave the tick.
    assert sla.tick(sessions, settings, T0 + 70 * MIN).evaluated == 0


@SQLITE_ONLY
def test_alarm_and_claim_rules_open_one_ticket_each(sessions) -> None:
    settings = settings_for(
        "sqlite://", support={"alarm_ticket_min_severity": "major", "claim_tickets": False}
    )
    writer = BatchWriter(sessions, auto_register=True)
    for seq, sev in ((1, p.Severity.MINOR), (2, p.Severity.CRITICAL)):
        msg = p.FaultRaised(
            device_id="pi-a", boot_id="b", seq=seq, ts=T0, code=f"c{seq}", severity=sev
        )
        writer.write([Inbound(p.topic("pi-a", p.Kind.EVENT), p.encode(msg), T0)])
    opened = ticket_rules.run_ticket_rules(sessions, settings, T0 + 5)
    assert len(opened) == 1
    assert ticket_rules.run_ticket_rules(sessions, settings, T0 + 10) == []
    with sessions() as s:
        t = s.execute(select(Ticket)).scalar_one()
        assert (t.source, t.priority, t.requester_kind) == ("rule", 2, "internal")
        links = tickets.links_of(s, t.id)
    assert {x["kind"] for x in links} == {"alarm", "device"}


def test_import_is_all_or_none_and_rebuilds_timelines(api, sessions) -> None:
    client, tok, clock = api
    op, tech = _h(tok["operator"]), _h(tok["technician"])
    csv_headers = {**op, "Content-Type": "text/csv"}
    bad = (DATA / "servicenow_bad.csv").read_bytes()
    good = (DATA / "servicenow_good.csv").read_bytes()
    assert (
        client.post(
            "/api/v1/tickets/import", content=good, headers={**tech, "Content-Type": "text/csv"}
        ).status_code
        == 403
    )
    r = client.post("/api/v1/tickets/import", content=bad, headers=csv_headers)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_import"
    assert [(d["line"], d["column"]) for d in err["details"]] == [
        (3, "made_sla"),
        (4, "sys_updated_at"),
        (4, "incident_state"),
    ]
    with sessions() as s:
        assert s.execute(select(Ticket)).first() is None
    r = client.post("/api/v1/tickets/import", content=good, headers=csv_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"format": "servicenow", "tickets": 4, "events": 21, "closed": 3}
    again = client.post("/api/v1/tickets/import", content=good, headers=csv_headers)
    assert again.status_code == 409
    t = client.get("/api/v1/tickets/INC0000047", headers=tech).json()
    states = [e["data"]["to"] for e in t["events"] if e["kind"] == "state"]
    assert states == [
        "pending_third_party",
        "in_progress",
        "resolved",
        "reopened",
        "in_progress",
        "resolved",
        "closed",
    ]
    assert (t["state"], t["priority"], t["made_sla"]) == ("closed", 1, False)
    pending = client.get("/api/v1/tickets/INC0000050", headers=tech).json()
    assert pending["state"] == "pending_customer"
    # The clock replays imported history like native history.
    clock.now = pending["created_at"] + 86400
    with sessions() as s:
        view = sla.ticket_sla(s, "INC0000050", SupportSettings(), clock.now)
    res = next(c for c in view["targets"] if c["target"] == "resolution")
    assert (res["state"], res["elapsed_s"]) == ("paused", 7200.0)  # 10:00 -> 12:00, then paused
    analytics = client.get("/api/v1/support/analytics", headers=tech).json()
    assert {"compliance", "backlog", "time_to_resolve", "forecast"} <= set(analytics)


@SQLITE_ONLY
def test_vendor_contract_report_and_sla_gauges(sessions) -> None:
    settings = settings_for(
        "sqlite://", support={"vendors": {"maps-co": {"target_h": 2, "calendar": "24x7"}}}
    )
    support = settings.support
    with sessions() as s:
        number = tickets.create_ticket(
            s,
            SYSTEM,
            tickets.NewTicket("map tiles missing", "third_party_app", "acme", vendor="maps-co"),
            support,
            now=T0,
        )["number"]
        tickets.transition(s, SYSTEM, number, "pending_third_party", now=T0 + 10 * MIN)
        tickets.transition(s, SYSTEM, number, "in_progress", now=T0 + 190 * MIN)
    with sessions() as s:
        [row] = sla.vendor_report(s, support, T0 + 200 * MIN)
    assert row == {
        "vendor": "maps-co",
        "target_h": 2.0,
        "tickets": 1,
        "pending_h": 3.0,
        "breached": 1,
        "waiting_now": 0,
    }
    sla.tick(sessions, settings, T0 + 200 * MIN)
    collector = sla.SlaCollector(sessions, lambda: T0 + 200 * MIN)
    families = {f.name: f for f in collector.collect()}
    [open_sample] = families["fleet_tickets_open"].samples
    assert (open_sample.labels, open_sample.value) == (
        {"category": "third_party_app", "priority": "5"},
        1,
    )
    # Standard policy (priority 5): 20 min of its 8 h first response used (the wait on the
    # vendor paused it), so nothing is due within 4 h.
    soon = {s.labels["hours"]: s.value for s in families["fleet_sla_breaching_within"].samples}
    assert soon == {"1": 0, "4": 0}
