"""Webhooks against a real HTTP receiver on loopback: signed deliveries, retry after a
500 with backoff, disabling after repeated failures, and an outbox that survives a restart.
Time is chosen by the test; the delivery job is called directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import select

import protocol as p
from fleet_server.config import WebhookSettings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import AuditEntry, Device
from fleet_server.db.webhook_models import WebhookDelivery, WebhookSubscription
from fleet_server.domain import webhooks as rules
from fleet_server.services import warranty, webhooks
from fleet_server.services.audit import SYSTEM
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.jobs import run_presence_sweep
from fleet_server.services.registry import create_device
from fleet_server.services.webhook_delivery import deliver_due
from tests.server_fixtures import settings_for
from tests.support.webhook_receiver import Receiver, start_receiver

T0 = 1_790_000_000.0
FAST = WebhookSettings(timeout_s=5, base_delay_s=10, max_delay_s=600, max_attempts=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.stop()


def subscribe(sessions, url: str, events: list[str], **kw) -> tuple[int, str]:
    with sessions() as s:
        created = webhooks.create_subscription(
            s,
            name=kw.pop("name", "ops"),
            url=url,
            events=events,
            min_severity=kw.pop("min_severity", None),
            offline_after_s=kw.pop("offline_after_s", None),
            actor=SYSTEM,
            now=T0,
        )
    return created["id"], created["secret"]


def fault(device: str, seq: int, code: str, severity: p.Severity) -> Inbound:
    msg = p.FaultRaised(device_id=device, boot_id="b", seq=seq, ts=T0, code=code, severity=severity)
    return Inbound(p.topic(device, p.Kind.EVENT), p.encode(msg), T0)


def file_claim(sessions, device: str) -> None:
    with sessions() as s:
        warranty.create_claim(
            s, SYSTEM, device_ref=device, failure_mode="fan", failure_date=date(2026, 1, 2), now=T0
        )


def test_alarm_delivery_is_signed_and_retried_after_a_500(sessions, receiver) -> None:
    _id, secret = subscribe(sessions, receiver.url, ["alarm.raised"], min_severity="major")
    writer = BatchWriter(sessions, auto_register=True)
    writer.write([fault("pi-1", 1, "disk_low", p.Severity.MINOR)])  # below the threshold
    writer.write([fault("pi-1", 2, "overheat", p.Severity.CRITICAL)])
    receiver.statuses = [500]

    first = deliver_due(sessions, T0 + 1, settings=FAST)
    assert (first.delivered, first.failed_attempts) == (0, 1)
    assert len(receiver.requests) == 1
    # Not due again until its backoff passed (10 s, jittered down to no less than 5 s).
    assert not deliver_due(sessions, T0 + 2, settings=FAST)
    second = deliver_due(sessions, T0 + 12, settings=FAST)
    assert second.delivered == 1
    assert len(receiver.requests) == 2

    got = receiver.requests[-1]
    assert got.body == receiver.requests[0].body  # a retry sends the same bytes
    ts = got.headers[rules.TIMESTAMP_HEADER]
    sig = got.headers[rules.SIGNATURE_HEADER]
    assert sig.startswith("sha256=")
    assert rules.verify(secret, ts, sig, got.body, now=T0 + 12)
    assert not rules.verify(secret, ts, sig, got.body + b" ", now=T0 + 12)
    assert not rules.verify("whsec_other", ts, sig, got.body, now=T0 + 12)
    assert not rules.verify(secret, ts, sig, got.body, now=T0 + 12 + 3600)  # replayed later
    event = json.loads(got.body)
    assert event["type"] == "alarm.raised" == got.headers[rules.EVENT_HEADER]
    assert event["id"] == got.headers[rules.DELIVERY_HEADER]
    assert event["data"]["device_id"] == "pi-1"
    assert event["data"]["code"] == "overheat"
    assert event["data"]["raised_at"].endswith("Z")

    with sessions() as s:
        page = webhooks.list_deliveries(s, _id, None, webhooks.PageParams(10, 0))
    assert page.total == 1  # the minor alarm was filtered out
    delivery = page.items[0]
    assert delivery["status"] == "delivered"
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]


def test_repeated_failures_disable_the_subscription_with_an_audit_row(sessions, receiver) -> None:
    sub_id, _secret = subscribe(sessions, receiver.url, ["claim.filed"])
    receiver.always = 503
    settings = WebhookSettings(base_delay_s=1, max_delay_s=1, max_attempts=10, disable_after=3)
    file_claim(sessions, "pi-x")
    file_claim(sessions, "pi-y")
    now = T0
    for _ in range(5):
        now += 10
        deliver_due(sessions, now, settings=settings)
    assert len(receiver.requests) == 3  # then it stopped trying
    with sessions() as s:
        sub = s.get(WebhookSubscription, sub_id)
        assert sub is not None
        assert not sub.enabled
        assert sub.consecutive_failures == 3
        audit_row = s.execute(
            select(AuditEntry).where(AuditEntry.action == "webhook.auto_disable")
        ).scalar_one()
        assert audit_row.target_id == str(sub_id)
        pending = (
            s.execute(select(WebhookDelivery).where(WebhookDelivery.status == "pending"))
            .scalars()
            .all()
        )
        assert len(pending) == 2  # kept: they go out once it is enabled again
        # A disabled subscription gets no new events.
    file_claim(sessions, "pi-z")
    with sessions() as s:
        assert len(s.execute(select(WebhookDelivery)).scalars().all()) == 2
        webhooks.set_enabled(s, sub_id, True, actor=SYSTEM, now=now)
    receiver.always = None
    report = deliver_due(sessions, now + 100, settings=settings)
    assert report.delivered == 2


def test_the_outbox_is_transactional_and_survives_a_restart(db_url, engine, receiver) -> None:
    sessions = make_session_factory(engine)
    subscribe(sessions, receiver.url, ["claim.filed", "recall.state_changed"])
    # An event whose transaction rolls back queues nothing.
    with sessions() as s:
        webhooks.notify(s, "claim.filed", {"id": 1}, now=T0)
        s.rollback()
    file_claim(sessions, "pi-r")
    engine.dispose()  # the server stops before the job ran

    fresh = create_db_engine(db_url)
    try:
        report = deliver_due(make_session_factory(fresh), T0 + 5, settings=FAST)
    finally:
        fresh.dispose()
    assert report.delivered == 1
    assert [json.loads(r.body)["type"] for r in receiver.requests] == ["claim.filed"]
    claim = json.loads(receiver.requests[0].body)["data"]
    # one time format, nested times included
    assert claim["created_at"].endswith("Z")
    assert claim["evidence"]["checked_at"].endswith("Z")


def test_device_offline_longer_than_the_threshold_is_reported_once(sessions, receiver) -> None:
    subscribe(sessions, receiver.url, ["device.offline"], offline_after_s=120)
    with sessions() as s:
        create_device(s, {"device_id": "pi-off"}, actor=SYSTEM, now=T0)
        device = s.execute(select(Device).where(Device.device_id == "pi-off")).scalar_one()
        device.presence, device.presence_changed_at, device.last_seen = "offline", T0 + 10, T0
        s.commit()
    settings = settings_for("sqlite://")
    run_presence_sweep(sessions, settings, T0 + 100)  # offline for 90 s: not yet
    assert not deliver_due(sessions, T0 + 100, settings=FAST)
    run_presence_sweep(sessions, settings, T0 + 140)
    run_presence_sweep(sessions, settings, T0 + 150)  # the same spell: once
    assert deliver_due(sessions, T0 + 150, settings=FAST).delivered == 1
    data = json.loads(receiver.requests[0].body)["data"]
    assert data["device_id"] == "pi-off"
    assert data["offline_for_s"] == 130.0


def test_webhook_api_shows_the_secret_once_and_sends_a_test_event(api, receiver) -> None:
    client, tokens, clock = api
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    ops = {"Authorization": f"Bearer {tokens['operator']}"}
    body = {"name": "pager", "url": receiver.url, "events": ["alarm.raised", "claim.filed"]}
    assert client.post("/api/v1/webhooks", json=body, headers=ops).status_code == 403
    created = client.post("/api/v1/webhooks", json=body, headers=admin)
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    hook_id = created.json()["id"]
    shown = client.get(f"/api/v1/webhooks/{hook_id}", headers=ops).json()
    assert "secret" not in shown
    assert secret not in client.get("/api/v1/webhooks", headers=ops).text

    bad = client.post(
        "/api/v1/webhooks", json={**body, "name": "x", "url": "ftp://h/"}, headers=admin
    )
    assert bad.json()["error"]["code"] == "invalid_webhook"
    for url in ("http://[::1/x", "http:///nohost", "https://h/ space"):
        refused = client.post(
            "/api/v1/webhooks", json={**body, "name": "y", "url": url}, headers=admin
        )
        assert refused.status_code == 422, url

    tested = client.post(f"/api/v1/webhooks/{hook_id}/test", headers=ops)
    assert tested.status_code == 200, tested.text
    assert tested.json()["status"] == "delivered"
    assert tested.json()["attempt_log"][0]["status_code"] == 200
    got = receiver.requests[-1]
    ts, sig = got.headers[rules.TIMESTAMP_HEADER], got.headers[rules.SIGNATURE_HEADER]
    assert rules.verify(secret, ts, sig, got.body, now=clock.now)
    assert json.loads(got.body)["type"] == "webhook.test"

    log = client.get(f"/api/v1/webhooks/{hook_id}/deliveries", headers=ops).json()
    assert log["total"] == 1
    off = client.patch(f"/api/v1/webhooks/{hook_id}", json={"enabled": False}, headers=admin)
    assert off.json()["enabled"] is False
    assert client.delete(f"/api/v1/webhooks/{hook_id}", headers=admin).status_code == 200
    assert client.get(f"/api/v1/webhooks/{hook_id}", headers=ops).status_code == 404


def test_rollout_halt_and_rollback_are_notified(sessions, receiver) -> None:
    from fleet_server.db.rollout_models import Rollout
    from fleet_server.rollouts.lifecycle import RolloutEvent
    from fleet_server.services import rollouts
    from fleet_server.services.rollouts_history import move
    from tests.support.sim_fleet import add_bundle, register_fleet

    subscribe(sessions, receiver.url, ["rollout.halted", "rollout.rolled_back"])
    register_fleet(sessions, 6, revisions={"rev-a": 1.0})
    bundle = add_bundle(sessions, "2.0.0", revisions=["rev-a"])
    add_bundle(sessions, "1.0.0", revisions=["rev-a"], release_counter=2)
    with sessions() as s:
        draft = rollouts.create_draft(
            s, name="spring", bundle=bundle, selector={}, policy={}, actor=SYSTEM, now=T0
        )
        rollouts.start(s, draft["id"], actor=SYSTEM, now=T0)
        rollout = s.get(Rollout, draft["id"])
        assert rollout is not None
        # What the engine's store does when a failure criterion trips.
        rollout.halt_reason = "install failures 3/5 > 20%"
        move(s, rollout, RolloutEvent.HALT, now=T0 + 60, actor="engine", message="3/5 failed")
        s.commit()
        rollouts.act(s, draft["id"], "rollback", actor=SYSTEM, now=T0 + 120, to_version="1.0.0")
    assert deliver_due(sessions, T0 + 120, settings=FAST).delivered == 2
    events = [json.loads(r.body) for r in receiver.requests]
    assert [e["type"] for e in events] == ["rollout.halted", "rollout.rolled_back"]
    assert events[0]["data"]["rollout_id"] == draft["id"]
    assert events[0]["data"]["reason"] == "3/5 failed"
    assert events[1]["data"]["from_state"] == "halted"
    assert events[1]["data"]["version"] == "2.0.0"


def test_the_readme_receiver_snippet_verifies_a_real_delivery(sessions, receiver) -> None:
    import time
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    block = readme.split("<!-- webhook-verify -->", 1)[1].split("<!-- /webhook-verify -->")[0]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    verify = namespace["verify"]

    _id, secret = subscribe(sessions, receiver.url, ["claim.filed"])
    file_claim(sessions, "pi-readme")
    now = time.time()
    assert deliver_due(sessions, now + 1, settings=FAST).delivered == 1
    got = receiver.requests[0]
    assert verify(secret, got.headers, got.body)  # type: ignore[operator]
    assert not verify(secret, got.headers, got.body.replace(b"pi-readme", b"pi-forged"))  # type: ignore[operator]
    assert not verify("whsec_wrong", got.headers, got.body)  # type: ignore[operator]
