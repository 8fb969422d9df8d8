"""A console world for tests: a migrated database, one user per role, a few devices with
telemetry, and helpers to sign in (shared by the HTTP tests and the browser tests)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Bundle, TelemetryHourly, telemetry_table
from fleet_server.db.sbom_models import BundleComponent
from fleet_server.domain.osv import purl_key
from fleet_server.domain.roles import Role
from fleet_server.migrations import upgrade_to_head
from fleet_server.services import advisories, users
from fleet_server.services.audit import SYSTEM
from fleet_server.services.registry import create_device, get_device

PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
"""argon2id with small costs: the production parameters take about half a second per hash
on a busy 2-core machine, and these tests sign in dozens of times."""


@contextmanager
def cheap_hashing() -> Iterator[None]:
    """Hash and verify with :data:`CHEAP` inside the block (argon2id all the same)."""
    before = users.hasher()
    users.use_hasher(CHEAP)
    try:
        yield
    finally:
        users.use_hasher(before)


def user_name(role: Role) -> str:
    """The test user of ``role``."""
    return f"{role.value}-user"


@dataclass
class World:
    """The database of a console test."""

    url: str
    sessions: sessionmaker[Session]


def make_world(url: str, now: float) -> World:
    """Migrate ``url`` and add one user per role (password :data:`PASSWORD`)."""
    engine = create_db_engine(url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    with sessions() as s:
        for role in Role:
            users.create_user(s, user_name(role), role, actor=SYSTEM, now=now, password=PASSWORD)
    return World(url, sessions)


def add_device(world: World, now: float, **fields: Any) -> None:
    """Register a device (``device_id`` and ``model`` at least)."""
    with world.sessions() as s:
        create_device(s, fields, actor=SYSTEM, now=now)
        s.commit()


def add_samples(world: World, device_id: str, start: float, step: float, n: int) -> None:
    """``n`` raw samples every ``step`` seconds from ``start`` (temp_c rises and falls)."""
    with world.sessions() as s:
        key = get_device(s, device_id).id
        rows = [
            {
                "device_key": key,
                "ts": start + i * step,
                "temp_c": 40.0 + (i % 50) * 0.5,
                "cpu_pct": float(i % 100),
            }
            for i in range(n)
        ]
        s.execute(insert(telemetry_table), rows)
        s.commit()


def add_hourly(world: World, device_id: str, first_hour: int, hours: int) -> None:
    """Hourly aggregates (temperature only) for ``hours`` hours from ``first_hour``."""
    with world.sessions() as s:
        key = get_device(s, device_id).id
        for h in range(hours):
            t = 30.0 + (h % 24)
            s.add(
                TelemetryHourly(
                    device_key=key,
                    hour=first_hour + h * 3600,
                    samples=60,
                    temp_min=t - 1,
                    temp_avg=t,
                    temp_max=t + 1,
                )
            )
        s.commit()


def csrf_of(html: str) -> str:
    """The CSRF token a page embeds in its forms."""
    found = CSRF_FIELD.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: Any, username: str, password: str = PASSWORD) -> Any:
    """Sign in with a TestClient (keeps the cookie); the answer of the POST."""
    form = client.get("/console/login")
    return client.post(
        "/console/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )


def add_software(
    world: World,
    components: dict[str, list[tuple[str, str, str, str]]],
    osv_docs: list[dict[str, Any]],
    now: float,
) -> dict[str, Any]:
    """Components (name, version, licence, purl) of existing bundles by bundle name, then
    OSV advisories imported and matched as the jobs process would; the matching result."""
    with world.sessions() as s:
        for name, comps in components.items():
            bundle = s.execute(select(Bundle).where(Bundle.name == name)).scalar_one()
            for comp, version, licence, purl in comps:
                key = purl_key(purl)
                assert key is not None, purl
                s.add(
                    BundleComponent(
                        bundle_id=bundle.id,
                        name=comp,
                        version=version,
                        purl=purl,
                        purl_type=key[0],
                        package=key[1],
                        licence=licence,
                        supplier=None,
                        hashes={},
                    )
                )
        s.commit()
        docs = [(f"{d['id']}.json", d) for d in osv_docs]
        advisories.import_documents(s, docs, actor=SYSTEM, now=now)
        return advisories.match_pending(s, now=now)
