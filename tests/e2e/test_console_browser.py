"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright.

One server and one browser for the whole module, and one test whose steps each open
their own context (so cookies do not leak between users, and a parallel run never starts
a second Chromium). The server is the real app under uvicorn on a free
loopback port, on a SQLite world seeded through the services. Skips with a clear reason
when Chromium or Playwright is missing, unless FLEET_REQUIRE_REAL_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fleet_server.api import create_app
from fleet_server.db.models import Alarm, Device
from fleet_server.domain.roles import Role
from fleet_server.services import recalls, tickets
from fleet_server.services import rollouts as rollout_service
from fleet_server.services.audit import SYSTEM
from tests.conftest import need_service
from tests.server_fixtures import FakeClock, LiveServer, make_tokens, serve, settings_for
from tests.support.console_world import (
    PASSWORD,
    add_device,
    add_samples,
    add_software,
    cheap_hashing,
    make_world,
    user_name,
)
from tests.support.sbom_docs import osv
from tests.support.sim_fleet import add_bundle, register_fleet


def chromium_path() -> str | None:
    """Debian's Chromium (or ``FLEET_CHROMIUM``); the Playwright browser download is not
    used."""
    for candidate in (os.environ.get("FLEET_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("chromium")


SCRIPT = '<script>alert("owner")</script>'
IMG = '"><img src=x onerror=alert(2)>'
SVG = "<svg onload=alert(3)>fan stopped"
OFFLINE = ("sim-00000", "sim-00001", "sim-00002")


@dataclass
class Site:
    """The running console and what the tests need to find in it."""

    url: str
    server: LiveServer
    tokens: dict[str, str]
    rollout_id: str
    sessions: Any
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with cheap_hashing():
        clock = FakeClock()
        now = clock.now
        world = make_world(f"sqlite:///{tmp_path_factory.mktemp('console')}/fleet.db", now)
        register_fleet(world.sessions, 12, revisions={"rev-a": 1.0}, now=now)
        add_device(world, now, device_id="pi-evil", model="edge-1", owner=SCRIPT, serial=IMG)
        add_samples(world, "sim-00003", now - 6 * 3600, 60.0, 360)
        with world.sessions() as s:
            for row in s.execute(select(Device).where(Device.device_id.in_(OFFLINE))).scalars():
                row.presence = "offline"
            evil = s.execute(select(Device).where(Device.device_id == "pi-evil")).scalar_one()
            evil.open_faults = 1
            s.add(
                Alarm(
                    device_key=evil.id,
                    code="fan_stall",
                    severity="major",
                    state="open",
                    raised_at=now - 60,
                    raised_seq=1,
                    raised_boot_id="b1",
                    message=SVG,
                )
            )
            s.commit()
        bundle = add_bundle(world.sessions, "1.1.0", revisions=["rev-a"], now=now)
        with world.sessions() as s:
            draft = rollout_service.create_draft(
                s,
                name="spring-release",
                bundle=bundle,
                selector={"model": "edge-1"},
                policy={"bake_s": 300},
                actor=SYSTEM,
                now=now,
            )
            campaign = recalls.create_campaign(
                s,
                SYSTEM,
                campaign_id="RC-1",
                title="batch lot-1 fans",
                scope={"batches": ["lot-1"]},
                now=now,
                physical_action="replace",
            )
            recalls.open_campaign(s, SYSTEM, campaign, now=now)
            s.commit()
            ticket = tickets.NewTicket(
                title=SCRIPT,
                category="device_hardware",
                requester="c",
                links=[("device", "pi-evil")],
            )
            t = tickets.open_ticket(s, SYSTEM, ticket, settings_for(world.url).support, now=now)
            s.commit()
            tickets.add_comment(s, SYSTEM, t.number, IMG, public=True, now=now)
        openssl = ("openssl", "3.0.11-1", "Apache-2.0", "pkg:deb/debian/openssl@3.0.11-1")
        fixed = [{"introduced": "0"}, {"fixed": "3.0.13-1"}]
        add_software(
            world,
            {bundle: [openssl]},
            [osv("DSA-9-1", {"ecosystem": "Debian:12", "name": "openssl"}, fixed)],
            now,
        )
        app = create_app(settings_for(world.url), sessions=world.sessions, clock=clock)
        server = serve(app)
        try:
            yield Site(server.url, server, make_tokens(world.sessions), draft["id"], world.sessions)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium_bin = chromium_path()
    if chromium_bin is None:
        need_service("Chromium not found (Debian package `chromium`, or set FLEET_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need_service("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_bin, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """One signed-in browser context and page, recording script errors and dialogs."""

    def __init__(self, browser: Any, site: Site) -> None:
        self.site = site
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.alerts: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console",
            lambda msg: self.errors.append(msg.text) if msg.type == "error" else None,
        )
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm":  # our own confirmations before an action
            dialog.accept()
        else:  # an alert would be a script payload running
            self.alerts.append(dialog.message)
            dialog.dismiss()

    def go(self, path: str) -> Any:
        response = self.page.goto(self.site.url + path)
        assert response is not None
        return response

    def sign_in(self, username: str, password: str = PASSWORD) -> None:
        self.go("/console/login")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        self.page.click("button[type=submit]")

    def csrf(self) -> str:
        return str(self.page.locator("input[name=csrf_token]").first.get_attribute("value"))

    def close(self) -> None:
        self.context.close()


STEPS: list[Any] = []


def step(fn: Any) -> Any:
    """Register one step of :func:`test_console_in_a_real_browser`."""
    STEPS.append(fn)
    return fn


@step
def step_walk_every_page_and_follow_a_counter(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.ADMIN))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    offline = int(tab.page.inner_text("#count-presence-offline"))
    assert offline == len(OFFLINE)
    assert tab.page.evaluate("typeof htmx") == "object"
    tab.page.click("#count-presence-offline")
    tab.page.wait_for_url(re.compile(r".*/console/devices\?presence=offline$"))
    assert tab.page.locator("tr.device-row").count() == offline
    pages = [
        "/console/devices?sort=last_seen&dir=desc",
        "/console/devices/sim-00003",
        "/console/alarms",
        "/console/rollouts",
        f"/console/rollouts/{site.rollout_id}",
        "/console/bundles",
        "/console/bundles/edgefleet-edge-1-1.1.0-r1.tar.gz",
        "/console/recalls",
        "/console/recalls/RC-1",
        "/console/warranty",
        "/console/audit",
        "/console/users",
    ]
    for path in pages:
        assert tab.go(path).status == 200, path
        assert tab.page.locator("#error").count() == 0, path
    # The warranty analyses arrive through htmx after the page.
    tab.page.wait_for_function("!document.body.textContent.includes('computing…')")
    assert tab.page.locator("#error").count() == 0
    assert tab.errors == [], tab.errors  # no CSP violation, no script error on any page


@step
def step_chart_shows_what_the_api_reports(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.VIEWER))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    tab.go("/console/devices/sim-00003?range=24h")
    tab.page.wait_for_selector("[data-chart=chart-temp_c] canvas")
    shown = json.loads(tab.page.inner_text("#chart-temp_c"))
    drawn = tab.page.get_attribute("[data-chart=chart-temp_c]", "data-points")
    api = httpx.get(
        f"{site.url}/api/v1/devices/sim-00003/series",
        params={
            "signal": "temp_c",
            "since": datetime.fromtimestamp(shown["since"], UTC).isoformat(),
            "until": datetime.fromtimestamp(shown["until"], UTC).isoformat(),
        },
        headers={"Authorization": f"Bearer {site.tokens['viewer']}"},
    ).json()
    assert shown["points"] == api["points"]
    assert len(api["points"]) == 360
    assert drawn == "360"
    assert tab.errors == []


@step
def step_operator_starts_and_pauses_a_rollout(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.OPERATOR))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    tab.go(f"/console/rollouts/{site.rollout_id}")
    assert tab.page.inner_text("#rollout-state") == "draft"
    tab.page.click("#action-start")
    tab.page.wait_for_selector("#action-pause")
    assert tab.page.inner_text("#rollout-state") == "running"
    tab.page.fill("#rollout-actions input[name=reason]", "checking the canaries")
    tab.page.click("#action-pause")
    tab.page.wait_for_selector("#action-resume")
    assert tab.page.inner_text("#rollout-state") == "paused"
    tab.page.fill("#explain-form input[name=explain]", "sim-00003")
    tab.page.click("#explain-form button")
    tab.page.wait_for_selector("#explained")
    assert "sim-00003" in tab.page.inner_text("#explained")
    history = tab.page.inner_text("#history")
    assert f"{user_name(Role.OPERATOR)} (operator)" in history
    # The actions are in the audit log under the person's name.
    audit = httpx.get(
        f"{site.url}/api/v1/audit",
        params={"actor": user_name(Role.OPERATOR)},
        headers={"Authorization": f"Bearer {site.tokens['admin']}"},
    ).json()["items"]
    assert {"rollout.start", "rollout.pause"} <= {e["action"] for e in audit}
    # A POST without the session's CSRF token is refused, even from the signed-in page.
    forged = tab.page.request.post(f"{site.url}/console/rollouts/{site.rollout_id}/resume")
    assert forged.status == 403
    assert "csrf_refused" in forged.text()


@step
def step_viewer_sees_no_operator_buttons_and_a_forged_post_is_refused(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.VIEWER))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    tab.go(f"/console/rollouts/{site.rollout_id}")
    assert tab.page.locator("button.op").count() == 0
    tab.go("/console/devices/sim-00003")
    assert tab.page.locator("button.op").count() == 0
    assert tab.go("/console/users").status == 403
    forged = tab.page.request.post(
        f"{site.url}/console/rollouts/{site.rollout_id}/cancel",
        form={"csrf_token": tab.csrf()},
    )
    assert forged.status == 403
    assert "needs operator" in forged.text()


@step
def step_login_is_throttled_with_a_clear_message(tab: Tab, _site: Site) -> None:
    for _ in range(5):
        tab.sign_in(user_name(Role.TECHNICIAN), "not the password")
        assert "Wrong username or password" in tab.page.inner_text("#login-message")
    tab.sign_in(user_name(Role.TECHNICIAN))
    message = tab.page.inner_text("#login-message")
    assert "Too many failed sign-ins for this account" in message
    assert "Try again in" in message


@step
def step_payloads_are_shown_as_text_and_never_run(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.ADMIN))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    tab.go("/console/devices/pi-evil")
    assert tab.page.inner_text("#field-owner") == SCRIPT
    assert tab.page.inner_text("#field-serial") == IMG
    assert SVG in tab.page.inner_text("#device-alarms")
    tab.go("/console/alarms")
    assert SVG in tab.page.inner_text("#alarms")
    tab.go("/console/devices?model=edge-1")
    assert SCRIPT in tab.page.inner_text("#devices")
    tab.go("/console/audit")
    assert tab.page.locator("img[src=x], svg[onload]").count() == 0
    assert tab.alerts == []
    assert tab.errors == [], tab.errors


@step
def step_support_and_software_pages_show_payloads_as_text(tab: Tab, _site: Site) -> None:
    tab.sign_in(user_name(Role.ADMIN))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    tab.page.click("nav a[href$='/tickets']")
    tab.page.click("#tickets a[href$='/tickets/TKT-000001']")
    assert tab.page.inner_text("#ticket-title") == SCRIPT
    assert IMG in tab.page.inner_text("#ticket-comments")
    tab.page.click("#ticket-links a")  # the linked device, which lists the ticket back
    assert "TKT-000001" in tab.page.inner_text("#device-tickets")
    for path in ("/console/status", "/console/software?by=model", "/console/licences"):
        assert tab.go(path).status == 200, path
        assert tab.page.locator("#error").count() == 0, path
    tab.go("/console/advisories")
    tab.page.click("#advisories a[href$='/advisories/DSA-9-1']")
    assert tab.page.inner_text("#advisory-id") == "DSA-9-1"
    assert tab.page.locator("img[src=x], script:not([src]):not([type])").count() == 0
    assert tab.alerts == []
    assert tab.errors == [], tab.errors


@step
def step_the_overview_refreshes_itself(tab: Tab, site: Site) -> None:
    tab.sign_in(user_name(Role.VIEWER))
    tab.page.wait_for_url(re.compile(r".*/console/$"))
    before = int(tab.page.inner_text("#count-presence-offline"))
    with site.sessions() as s:
        row = s.execute(select(Device).where(Device.device_id == "sim-00005")).scalar_one()
        row.presence = "offline"
        s.commit()
    try:
        tab.page.wait_for_function(
            "n => Number(document.querySelector('#count-presence-offline').textContent) === n",
            arg=before + 1,
            timeout=8000,
        )
    finally:
        with site.sessions() as s:
            row = s.execute(select(Device).where(Device.device_id == "sim-00005")).scalar_one()
            row.presence = "unknown"
            s.commit()


def test_console_in_a_real_browser(browser: Any, site: Site) -> None:
    """Every step in its own browser context (its own cookies), in one test so that one
    worker starts one server and one Chromium whatever the test distribution."""
    for fn in STEPS:
        tab = Tab(browser, site)
        try:
            fn(tab, site)
        except AssertionError as exc:
            raise AssertionError(f"{fn.__name__}: {exc}") from exc
        finally:
            tab.close()
