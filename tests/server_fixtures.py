"""Fixtures shared by the fleet-server tests (imported by name in each test module)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.api import create_app
from fleet_server.config import Settings
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.domain.roles import Role
from fleet_server.migrations import upgrade_to_head
from fleet_server.services import tokens
from fleet_server.services.audit import SYSTEM
from tests.conftest import free_port, wait_for


class FakeClock:
    """A clock tests move by hand (services take ``now`` from it)."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (a file in tmp_path) and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url``, migrated to head."""
    eng = create_db_engine(db_url)
    upgrade_to_head(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory on the migrated database."""
    return make_session_factory(engine)


def settings_for(db_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings with the given database and section overrides, ignoring the environment."""
    data: dict[str, Any] = {"database": {"url": db_url}, **sections}
    return Settings.model_validate(data)


def make_tokens(sessions: sessionmaker[Session], now: float = 1_790_000_000.0) -> dict[str, str]:
    """One live token per role: role name -> secret."""
    out: dict[str, str] = {}
    with sessions() as session:
        for role in Role:
            _token, secret = tokens.create_token(
                session, f"test-{role.value}", role, actor=SYSTEM, now=now
            )
            out[role.value] = secret
        session.commit()
    return out


@dataclass
class LiveServer:
    """A real uvicorn serving the app on a free loopback port."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(app: Any) -> LiveServer:
    """Start ``app`` with uvicorn in a thread and wait until it answers."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=15)
    return LiveServer(url, server, thread)


@pytest.fixture
def api(
    sessions: sessionmaker[Session], db_url: str
) -> Iterator[tuple[Any, dict[str, str], FakeClock]]:
    """(Starlette TestClient, role -> token, clock) on a fresh database, no MQTT."""
    from fastapi.testclient import TestClient

    clock = FakeClock()
    app = create_app(settings_for(db_url), sessions=sessions, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, make_tokens(sessions), clock
