"""The console over HTTP (no browser): sign-in, cookies, throttling, CSRF, roles, audit,
security headers, and chart series downsampled in SQL (the browser tests in
tests/e2e/test_console_browser.py drive the same pages in Chromium)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_server.api import create_app
from fleet_server.db.console_models import ConsoleUser
from fleet_server.db.models import AuditEntry
from fleet_server.domain.roles import Role
from fleet_server.services import audit, users
from fleet_server.services.audit import SYSTEM
from fleet_server.services.series import signals_series
from tests.server_fixtures import FakeClock, make_tokens, settings_for
from tests.support.console_world import (
    PASSWORD,
    World,
    add_device,
    add_hourly,
    add_samples,
    cheap_hashing,
    csrf_of,
    make_world,
    sign_in,
    user_name,
)


@pytest.fixture(scope="module", autouse=True)
def _cheap_hashing() -> Iterator[None]:
    with cheap_hashing():
        yield


class Console:
    """An app on a fresh world and a way to open browsers (TestClients) on it."""

    def __init__(self, world: World, app: Any, clock: FakeClock) -> None:
        self.world, self.app, self.clock = world, app, clock
        self.clients: list[TestClient] = []

    def client(self, role: Role | None = None, address: str = "testclient") -> TestClient:
        """A new browser, over HTTPS from ``address``, signed in as the user of ``role``
        when given."""
        c = TestClient(
            self.app,
            base_url="https://testserver",
            raise_server_exceptions=False,
            client=(address, 50000),
        )
        self.clients.append(c)
        if role is not None:
            assert sign_in(c, user_name(role)).status_code == 303
        return c

    def add_user(self, name: str, role: Role) -> None:
        """One more user (tests that change a user's state use their own)."""
        with self.world.sessions() as s:
            users.create_user(s, name, role, actor=SYSTEM, now=self.clock.now, password=PASSWORD)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, _cheap_hashing: None) -> Console:
    """One world for the module (migrations cost seconds on a busy machine); tests that
    change a user or throttle an address use their own user or address."""
    clock = FakeClock()
    url = f"sqlite:///{tmp_path_factory.mktemp('console')}/fleet.db"
    world = make_world(url, clock.now)
    add_device(world, clock.now, device_id="pi-1", model="gw-100")
    app = create_app(settings_for(world.url), sessions=world.sessions, clock=clock)
    return Console(world, app, clock)


def test_pages_need_a_session_and_the_cookie_is_strict(console: Console) -> None:
    browser = console.client()
    away = browser.get("/console/devices?presence=offline", follow_redirects=False)
    assert away.status_code == 303
    assert away.headers["location"] == "/console/login?next=/console/devices"
    answer = sign_in(browser, user_name(Role.VIEWER))
    cookie = answer.headers["set-cookie"].lower()
    for flag in ("httponly", "samesite=strict", "secure", "path=/console"):
        assert flag in cookie
    page = browser.get("/console/devices")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["cache-control"] == "no-store"
    # The sign-in went to the audit log under the user's name.
    with console.world.sessions() as s:
        entry = s.execute(select(AuditEntry).where(AuditEntry.action == "user.login")).scalar()
        assert entry is not None
        assert entry.actor == user_name(Role.VIEWER)


def test_an_open_redirect_after_sign_in_is_refused(console: Console) -> None:
    browser = console.client()
    form = browser.get("/console/login")
    answer = browser.post(
        "/console/login",
        data={
            "username": user_name(Role.VIEWER),
            "password": PASSWORD,
            "csrf_token": csrf_of(form.text),
            "next": "//evil.example/x",
        },
        follow_redirects=False,
    )
    assert answer.headers["location"] == "/console/"


def test_sign_in_is_throttled_per_account_then_lifts(console: Console) -> None:
    browser = console.client(address="10.0.0.1")
    name = "throttled"
    console.add_user(name, Role.OPERATOR)
    for _ in range(5):
        assert sign_in(browser, name, "wrong password!!").status_code == 401
    refused = sign_in(browser, name)  # the right password, but too late
    assert refused.status_code == 429
    assert "Too many failed sign-ins for this account" in refused.text
    assert "Try again in 15 minutes" in refused.text
    console.clock.advance(901)
    assert sign_in(browser, name).status_code == 303


def test_sign_in_is_throttled_per_address(console: Console) -> None:
    browser = console.client(address="10.0.0.2")
    for i in range(20):
        assert sign_in(browser, f"nobody-{i}", "wrong password!!").status_code == 401
    refused = sign_in(browser, user_name(Role.ADMIN))
    assert refused.status_code == 429
    assert "your address" in refused.text


def test_login_form_without_its_csrf_cookie_is_refused(console: Console) -> None:
    browser = console.client()
    forged = browser.post(
        "/console/login",
        data={"username": user_name(Role.ADMIN), "password": PASSWORD, "csrf_token": "x"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert "fleet_console=" not in forged.headers.get("set-cookie", "")


def test_csrf_and_roles_refuse_forged_posts(console: Console) -> None:
    viewer = console.client(Role.VIEWER)
    operator = console.client(Role.OPERATOR)
    no_token = operator.post("/console/rollouts/ro-1/pause", data={"reason": "x"})
    assert no_token.status_code == 403
    assert "csrf_refused" in no_token.text
    wrong = operator.post("/console/rollouts/ro-1/pause", data={"csrf_token": "guess"})
    assert wrong.status_code == 403
    token = csrf_of(viewer.get("/console/").text)
    forged = viewer.post("/console/rollouts/ro-1/pause", data={"csrf_token": token})
    assert forged.status_code == 403
    assert "needs operator" in forged.text
    command = viewer.post(
        "/console/devices/pi-1/commands", data={"csrf_token": token, "kind": "reboot"}
    )
    assert command.status_code == 403
    # The htmx header carries the token as well as a form field does.
    header = operator.post(
        "/console/rollouts/ro-1/pause",
        headers={"X-CSRF-Token": csrf_of(operator.get("/console/").text)},
    )
    assert header.status_code == 404  # past CSRF and role: the rollout does not exist


def test_admin_manages_users_audited_under_their_name(console: Console) -> None:
    admin = console.client(Role.ADMIN)
    console.add_user("victor", Role.VIEWER)
    viewer = console.client()
    assert sign_in(viewer, "victor").status_code == 303
    token = csrf_of(admin.get("/console/users").text)
    made = admin.post(
        "/console/users", data={"csrf_token": token, "username": "carol", "role": "technician"}
    )
    assert made.status_code == 200
    assert 'id="new-password"' in made.text
    promote = admin.post(
        "/console/users/victor",
        data={"csrf_token": token, "change": "role", "role": "operator"},
        follow_redirects=False,
    )
    assert promote.status_code == 303
    # A role change ends the user's sessions: the viewer's browser must sign in again.
    assert viewer.get("/console/", follow_redirects=False).status_code == 303
    with console.world.sessions() as s:
        rows = audit.list_entries(s, audit.AuditFilter(action="user."), _page()).items
        mine = {(r.action, r.target_id) for r in rows if r.actor == user_name(Role.ADMIN)}
        assert ("user.create", "carol") in mine
        assert ("user.update", "victor") in mine
        carol = s.execute(select(ConsoleUser).where(ConsoleUser.username == "carol")).scalar()
        assert carol is not None
        assert carol.password_hash.startswith("$argon2id$")
    assert admin.get("/console/users").status_code == 200
    assert viewer.get("/console/users", follow_redirects=False).status_code == 303


def test_logout_everywhere_ends_every_browser(console: Console) -> None:
    console.add_user("tess", Role.TECHNICIAN)
    first, second = console.client(), console.client()
    assert sign_in(first, "tess").status_code == 303
    assert sign_in(second, "tess").status_code == 303
    token = csrf_of(first.get("/console/").text)
    out = first.post("/console/logout-everywhere", data={"csrf_token": token})
    assert out.status_code == 200  # followed to the login page
    assert "Sign in" in out.text
    assert second.get("/console/audit", follow_redirects=False).status_code == 303


def test_users_api_and_the_last_admin(console: Console) -> None:
    tokens = make_tokens(console.world.sessions)
    api = console.client(address="10.0.0.3")
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    made = api.post("/api/v1/users", json={"username": "dave", "role": "viewer"}, headers=admin)
    assert made.status_code == 201
    assert len(made.json()["password"]) >= 12
    listed = api.get("/api/v1/users", headers=admin).json()
    assert "dave" in [u["username"] for u in listed["items"]]
    assert all("password_hash" not in u for u in listed["items"])
    last = api.patch(
        f"/api/v1/users/{user_name(Role.ADMIN)}", json={"role": "viewer"}, headers=admin
    )
    assert last.status_code == 409
    short = api.patch("/api/v1/users/dave", json={"password": "short"}, headers=admin)
    assert short.status_code == 422
    assert short.json()["error"]["code"] == "weak_password"
    viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    assert api.get("/api/v1/users", headers=viewer).status_code == 403


def _page() -> Any:
    from fleet_server.services.paging import PageParams

    return PageParams(100, 0)


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_series_are_downsampled_in_sql(backend: str, tmp_path: Path, request: Any) -> None:
    url = (
        f"sqlite:///{tmp_path}/fleet.db"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    clock = FakeClock()
    world = make_world(url, clock.now)
    add_device(world, clock.now, device_id="pi-s", model="gw-100")
    now = clock.now
    add_samples(world, "pi-s", now - 86400, 30.0, 2880)  # one day, every 30 s
    add_hourly(world, "pi-s", int(now // 3600) * 3600 - 60 * 86400, 60 * 24)
    app = create_app(settings_for(url), sessions=world.sessions, clock=clock)
    tokens = make_tokens(world.sessions)
    with TestClient(app) as api:
        auth = {"Authorization": f"Bearer {tokens['viewer']}"}

        def series(since: float, **extra: Any) -> dict[str, Any]:
            params = {"signal": "temp_c", "since": _iso(since), "until": _iso(now), **extra}
            got = api.get("/api/v1/devices/pi-s/series", params=params, headers=auth)
            assert got.status_code == 200, got.text
            return got.json()

        hour = series(now - 3600)
        assert hour["source"] == "raw"
        assert len(hour["points"]) == 120
        day = series(now - 86400)
        assert day["source"] == "raw_avg"
        assert 0 < len(day["points"]) <= 1000
        assert all(40.0 <= v <= 64.5 for _t, v in day["points"])
        month = series(now - 30 * 86400)
        assert month["source"] == "hourly_avg"
        assert len(month["points"]) <= 1000
        small = series(now - 86400, max_points=100)
        assert len(small["points"]) <= 100
        # The device page asks for several signals at once and gets what each gets alone.
        with world.sessions() as s:
            for since in (now - 3600, now - 86400, now - 30 * 86400):
                many = signals_series(
                    s, "pi-s", ["temp_c", "cpu_pct", "mem_pct"], since=since, until=now
                )
                assert many["temp_c"] == series(since)
                assert many["mem_pct"]["points"] == []  # never reported
                # cpu has raw samples for the last day, no hourly aggregates in this world
                assert bool(many["cpu_pct"]["points"]) == (since > now - 2 * 86400)
        bad = api.get(
            "/api/v1/devices/pi-s/series",
            params={"signal": "undervoltage", "since": _iso(now - 60), "until": _iso(now)},
            headers=auth,
        )
        assert bad.status_code == 422
