"""Service SLOs on a real database: the API records its own request outcomes per minute,
a synthetic outage opens one cloud-infrastructure ticket and queues an ``slo.alert``
webhook, and the status page shows each component over 90 days."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from fleet_server.db.ticket_models import SloMinute, Ticket
from fleet_server.db.webhook_models import WebhookDelivery
from fleet_server.services import slo, webhooks
from fleet_server.services.audit import SYSTEM
from tests.server_fixtures import settings_for


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_requests_recorded_outage_ticket_and_status_page(api, sessions, db_url) -> None:
    client, tok, clock = api
    viewer = {"Authorization": f"Bearer {tok['viewer']}"}
    clock.now = (clock.now // 60) * 60 + 1
    minute = int(clock.now // 60)
    assert client.get("/api/v1/devices", headers=viewer).status_code == 200
    assert client.get("/api/v1/tickets/TKT-none", headers=viewer).status_code == 404
    clock.advance(60)  # the next request writes the finished minute
    client.get("/api/v1/tickets", headers=viewer)
    with sessions() as s:
        rows = {
            (r.component, r.minute): (r.good, r.total)
            for r in s.execute(select(SloMinute)).scalars()
        }
    assert rows[("api_availability", minute)] == (2, 2)  # a 404 is not the service's fault
    assert rows[("api_latency", minute)][1] == 2

    with sessions() as s:
        webhooks.create_subscription(
            s,
            name="sre",
            url="http://127.0.0.1:9/hook",
            events=["slo.alert"],
            min_severity=None,
            offline_after_s=None,
            actor=SYSTEM,
            now=clock.now,
        )
    # Ten minutes of a 30 % error outage ending now.
    now_min = int(clock.now // 60)
    with sessions() as s, s.begin():
        slo.add_minutes(
            s, {("api_availability", m): [700, 1000] for m in range(now_min - 10, now_min)}
        )
    settings = settings_for(db_url)
    # (api_latency may alert as well on a loaded machine: its two requests are real.)
    assert "api_availability" in slo.run_slo_job(sessions, settings, clock.now)
    assert "api_availability" in slo.run_slo_job(sessions, settings, clock.now + 60)
    title = "SLO api_availability: burn-rate alert"
    with sessions() as s:
        opened = s.execute(select(Ticket).where(Ticket.title == title)).scalars().all()
        queued = [
            d
            for d in s.execute(
                select(WebhookDelivery.body).where(WebhookDelivery.event_type == "slo.alert")
            ).scalars()
            if '"component":"api_availability"' in d
        ]
        background = (
            s.execute(select(SloMinute.component).where(SloMinute.minute == now_min - 1))
            .scalars()
            .all()
        )
    assert len(opened) == 1  # one open ticket per component under alert
    assert (opened[0].category, opened[0].priority) == ("cloud_infrastructure", 1)
    assert len(queued) == 1
    assert {"ingest_freshness", "command_delivery"} <= set(background)

    page = client.get("/api/v1/status", headers=viewer).json()
    comps = {c["component"]: c for c in page["components"]}
    assert set(comps) == {"api_availability", "api_latency", "ingest_freshness", "command_delivery"}
    api_c = comps["api_availability"]
    assert len(api_c["days"]) == 90
    assert api_c["alerts"][0]["severity"] == "page"
    assert api_c["budget_exhausted_at"] is not None
