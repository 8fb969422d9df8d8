"""The console's support and software pages over HTTP: role limits and CSRF on their
forms, internal comments hidden from viewers, escaping, audit under the user's name, the
exposed-device link, the remedy and licence decisions; and the ticket rule that opens one
security-incident ticket per new critical exposure."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_server.api import create_app
from fleet_server.db.models import AuditEntry, Bundle
from fleet_server.db.sbom_models import LicenceReview
from fleet_server.db.ticket_models import Ticket
from fleet_server.domain.roles import Role
from fleet_server.services import ticket_rules, tickets
from fleet_server.services.audit import SYSTEM
from fleet_server.services.registry import get_device
from tests.server_fixtures import FakeClock, settings_for
from tests.support.console_world import (
    World,
    add_device,
    add_software,
    cheap_hashing,
    csrf_of,
    make_world,
    sign_in,
    user_name,
)
from tests.support.sbom_docs import osv
from tests.support.sim_fleet import add_bundle

OLD, FIX = "edgefleet-edge-1-1.0.0-r1.tar.gz", "edgefleet-edge-1-1.1.0-r2.tar.gz"
BUSYBOX = ("busybox", "1.36.1", "GPL-2.0-only", "pkg:generic/busybox@1.36.1")
PAYLOAD = '<script>alert("ticket")</script>'


def _openssl(version: str) -> tuple[str, str, str, str]:
    return ("openssl", version, "Apache-2.0", f"pkg:deb/debian/openssl@{version}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Any, FakeClock]]:
    """Two exposed devices on 1.0.0 (openssl fixed in 1.1.0, busybox fixed nowhere), a
    pending licence review, and a ticket about pi-1 with a public and an internal note."""
    with cheap_hashing():
        clock = FakeClock()
        now = clock.now
        world = make_world(f"sqlite:///{tmp_path_factory.mktemp('cs')}/fleet.db", now)
        for device_id in ("pi-1", "pi-2"):
            add_device(world, now, device_id=device_id, model="edge-1", hw_revision="rev-a")
        add_device(world, now, device_id="pi-3", model="edge-1", hw_revision="rev-a")
        with world.sessions() as s:
            for device_id, version in (("pi-1", "1.0.0"), ("pi-2", "1.0.0"), ("pi-3", "1.1.0")):
                get_device(s, device_id).software_version = version
            s.commit()
        add_bundle(world.sessions, "1.0.0", revisions=["rev-a"], now=now)
        add_bundle(world.sessions, "1.1.0", revisions=["rev-a"], release_counter=2, now=now)
        with world.sessions() as s:
            old = s.execute(select(Bundle).where(Bundle.name == OLD)).scalar_one()
            needs = [{"name": "busybox", "version": "1.36.1", "licence": "GPL-2.0-only"}]
            s.add(
                LicenceReview(
                    bundle_id=old.id,
                    state="pending",
                    evaluation={"needs_review": needs, "obligations": ["source_offer"]},
                    note="",
                )
            )
            t = tickets.open_ticket(
                s,
                SYSTEM,
                tickets.NewTicket(
                    title=PAYLOAD,
                    category="device_hardware",
                    requester="customer@example.com",
                    links=[("device", "pi-1")],
                ),
                settings_for("sqlite://").support,
                now=now,
            )
            s.commit()
            number = t.number
            tickets.add_comment(s, SYSTEM, number, "customer told", public=True, now=now)
            tickets.add_comment(s, SYSTEM, number, "secret triage", public=False, now=now)
        add_software(
            world,
            {OLD: [BUSYBOX, _openssl("3.0.11-1")], FIX: [BUSYBOX, _openssl("3.0.13-1")]},
            [
                osv(
                    "DSA-9-1",
                    {"ecosystem": "Debian:12", "name": "openssl"},
                    [{"introduced": "0"}, {"fixed": "3.0.13-1"}],
                ),
                osv(
                    "GHSA-bb-1",
                    {"purl": "pkg:generic/busybox"},
                    [{"introduced": "1.30.0"}, {"fixed": "1.37.0"}],
                    vector="CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N",
                ),
            ],
            now,
        )
        app = create_app(settings_for(world.url), sessions=world.sessions, clock=clock)
        yield world, app, clock


def _client(app: Any, role: Role) -> TestClient:
    c = TestClient(app, base_url="https://testserver", raise_server_exceptions=False)
    assert sign_in(c, user_name(role)).status_code == 303
    return c


def _audited(world: World, action: str) -> list[tuple[str, str | None]]:
    with world.sessions() as s:
        rows = s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars()
        return [(r.actor, r.target_id) for r in rows]


def test_a_critical_exposure_opens_one_security_ticket(world: Any) -> None:
    w, _app, clock = world
    settings = settings_for(w.url)
    opened = ticket_rules.run_ticket_rules(w.sessions, settings, clock.now + 5)
    assert len(opened) == 1  # openssl is critical; busybox (high) raises no event
    assert ticket_rules.run_ticket_rules(w.sessions, settings, clock.now + 10) == []
    with w.sessions() as s:
        t = s.execute(select(Ticket).where(Ticket.number == opened[0])).scalar_one()
        assert (t.category, t.priority, t.source) == ("security_incident", 1, "rule")
        assert "DSA-9-1" in t.title
        assert [(x["kind"], x["ref"]) for x in tickets.links_of(s, t.id)] == [
            ("advisory", "DSA-9-1")
        ]


def test_ticket_pages_roles_csrf_escaping_and_audit(world: Any) -> None:
    w, app, _clock = world
    viewer, tech = _client(app, Role.VIEWER), _client(app, Role.TECHNICIAN)
    listed = viewer.get("/console/tickets?state=new&category=device_hardware")
    assert listed.status_code == 200
    assert "TKT-000001" in listed.text
    assert 'href="/console/tickets?state=new"' in listed.text  # a counter links its list
    assert PAYLOAD not in listed.text
    assert "&lt;script&gt;" in listed.text
    assert viewer.get("/console/tickets?priority=x").status_code == 422
    page = viewer.get("/console/tickets/TKT-000001")
    assert "customer told" in page.text
    assert "secret triage" not in page.text  # internal, as the API hides it from viewers
    assert 'id="ticket-move"' not in page.text
    assert 'id="comment-form"' not in page.text
    assert 'href="/console/devices/pi-1"' in page.text
    assert 'id="ticket-sla"' in page.text
    full = tech.get("/console/tickets/TKT-000001")
    assert "secret triage" in full.text
    assert 'id="move-in_progress"' in full.text
    token = csrf_of(viewer.get("/console/tickets").text)
    refused = viewer.post(
        "/console/tickets/TKT-000001/transition", data={"csrf_token": token, "state": "cancelled"}
    )
    assert refused.status_code == 403
    assert "needs technician" in refused.text
    forged = tech.post("/console/tickets/TKT-000001/comments", data={"body": "x"})
    assert forged.status_code == 403
    assert "csrf_refused" in forged.text
    token = csrf_of(full.text)
    moved = tech.post(
        "/console/tickets/TKT-000001/transition",
        data={"csrf_token": token, "state": "in_progress", "note": "on it"},
        follow_redirects=False,
    )
    assert moved.status_code == 303
    said = tech.post(
        "/console/tickets/TKT-000001/comments",
        data={"csrf_token": token, "body": PAYLOAD, "public": "true"},
    )
    assert said.status_code == 200
    assert PAYLOAD not in said.text
    assert "&lt;script&gt;alert" in said.text
    bad = tech.post(
        "/console/tickets/TKT-000001/transition", data={"csrf_token": token, "state": "new"}
    )
    assert bad.status_code == 409  # the lifecycle's refusal, as a page
    tech_name = user_name(Role.TECHNICIAN)
    assert (tech_name, "TKT-000001") in _audited(w, "ticket.state")
    assert (tech_name, "TKT-000001") in _audited(w, "ticket.response")
    device = viewer.get("/console/devices/pi-1")
    assert 'href="/console/tickets/TKT-000001"' in device.text
    assert "pkg:deb/debian/openssl@3.0.11-1" in device.text  # its components
    status = viewer.get("/console/status")
    assert status.status_code == 200
    assert 'id="status"' in status.text


def test_software_pages_remedy_and_licence_decisions(world: Any) -> None:
    w, app, _clock = world
    viewer, operator = _client(app, Role.VIEWER), _client(app, Role.OPERATOR)
    admin = _client(app, Role.ADMIN)
    inventory = viewer.get("/console/software?by=model&component=openssl")
    assert inventory.status_code == 200
    assert "3.0.11-1" in inventory.text
    listed = viewer.get("/console/advisories?exposed=true")
    assert 'href="/console/devices?advisory=DSA-9-1">2</a>' in listed.text
    assert FIX in listed.text  # the earliest fix of openssl
    exposed = viewer.get("/console/devices?advisory=DSA-9-1")
    assert exposed.text.count('class="device-row"') == 2
    assert "pi-3" not in exposed.text.split('id="devices"')[1]
    assert viewer.get("/console/devices?advisory=nope").status_code == 404
    page = viewer.get("/console/advisories/DSA-9-1")
    assert "remedy-rollout" not in page.text
    token = csrf_of(page.text)
    refused = viewer.post("/console/advisories/DSA-9-1/remedy", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "needs operator" in refused.text
    assert operator.post("/console/advisories/DSA-9-1/remedy", data={}).status_code == 403
    op_page = operator.get("/console/advisories/DSA-9-1")
    assert 'id="remedy-rollout-1"' in op_page.text
    token = csrf_of(op_page.text)
    rollout = operator.post(
        "/console/advisories/DSA-9-1/remedy",
        data={"csrf_token": token, "model": "edge-1"},
        follow_redirects=False,
    )
    assert rollout.status_code == 303
    assert rollout.headers["location"].startswith("/console/rollouts/")
    recall = operator.post(
        "/console/advisories/GHSA-bb-1/remedy",
        data={"csrf_token": token, "model": "edge-1"},
        follow_redirects=False,
    )
    assert recall.headers["location"] == "/console/recalls/ADV-GHSA-bb-1"
    assert [a for a, _ in _audited(w, "advisory.remedy")] == [user_name(Role.OPERATOR)] * 2

    reviews = viewer.get("/console/licences")
    assert OLD in reviews.text
    assert "busybox@1.36.1" in reviews.text
    assert 'value="approved"' not in reviews.text
    token = csrf_of(operator.get("/console/licences").text)
    no = operator.post(
        f"/console/licences/{OLD}",
        data={"csrf_token": token, "decision": "approved", "reason": "fine"},
    )
    assert no.status_code == 403
    assert "needs admin" in no.text
    token = csrf_of(admin.get("/console/licences").text)
    unexplained = admin.post(
        f"/console/licences/{OLD}", data={"csrf_token": token, "decision": "approved"}
    )
    assert unexplained.status_code == 422
    approved = admin.post(
        f"/console/licences/{OLD}",
        data={"csrf_token": token, "decision": "approved", "reason": "GPL source offer ready"},
        follow_redirects=False,
    )
    assert approved.status_code == 303
    assert _audited(w, "licence.review") == [(user_name(Role.ADMIN), OLD)]
    assert OLD in admin.get("/console/licences?state=approved").text
