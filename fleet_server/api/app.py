"""The FastAPI application factory.

``create_app(settings)`` wires the database, the optional MQTT publisher and metrics into
one app. Later features add routers with ``app.include_router(...)`` and declare their
routes in :data:`fleet_server.domain.roles.PERMISSIONS`; the authorization dependency is
applied to every route, so an undeclared route is refused rather than left open.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server import __version__
from fleet_server.api.auth_throttle import FailureWindow
from fleet_server.api.deps import AppContext, authorize, request_id
from fleet_server.api.errors import install_error_handlers
from fleet_server.api.headers import SecurityHeaders
from fleet_server.api.limits import BodyLimit
from fleet_server.api.openapi_security import declare_security
from fleet_server.api.routers import (
    admin,
    alarms,
    analytics,
    charts,
    credentials,
    deployments,
    devices,
    groups,
    recalls,
    rma,
    rollouts,
    software,
    system,
    tickets,
    users,
    warranty,
    webhooks,
)
from fleet_server.api.schemas_rollouts import add_rollout_components
from fleet_server.api.slashes import TrailingSlash
from fleet_server.api.slo_recording import install_support
from fleet_server.config import Settings
from fleet_server.console.app import create_console
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Alarm
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.commands import Publisher
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.presence import presence_counts
from fleet_server.updates.tuf_router import tuf_router

log = logging.getLogger(__name__)


class FleetCollector(Collector):
    """Fleet-wide gauges computed at scrape time (counts only, no device data)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Devices per presence state and open alarms per severity."""
        try:
            with self.sessions() as session:
                counts = presence_counts(session)
                alarms = session.execute(
                    select(Alarm.severity, func.count())
                    .where(Alarm.state == "open")
                    .group_by(Alarm.severity)
                ).all()
        except Exception:
            log.warning("metrics: database unavailable for fleet gauges")
            return
        devices = GaugeMetricFamily(
            "fleet_devices", "Active devices by presence", labels=["presence"]
        )
        for state, n in counts.items():
            devices.add_metric([state], n)
        yield devices
        open_alarms = GaugeMetricFamily(
            "fleet_open_alarms", "Open alarms by severity", labels=["severity"]
        )
        for severity, n in alarms:
            open_alarms.add_metric([severity], int(n))
        yield open_alarms


def create_app(
    settings: Settings,
    *,
    sessions: sessionmaker[Session] | None = None,
    publisher: Publisher | None = None,
    metrics: IngestMetrics | None = None,
    clock: Clock = system_clock,
) -> FastAPI:
    """Build the API app; ``sessions`` defaults to an engine on ``settings.database``."""
    if sessions is None:
        engine = create_db_engine(settings.database.url, pool_size=settings.database.pool_size)
        sessions = make_session_factory(engine)
    app = FastAPI(
        title="Edgefleet fleet server",
        version=__version__,
        description=(
            "Device registry, telemetry, presence, alarms, commands and audit. "
            "Authenticate with `Authorization: Bearer efk_...`; `/healthz` and `/metrics` "
            "need no token. Errors always have the body "
            '`{"error": {"code", "message", "details"}}`. '
            "Times: every answer gives ISO 8601 UTC strings (`format: date-time`); "
            "request filters such as a selector's `seen_after` take epoch seconds."
        ),
        servers=[{"url": "/", "description": "this server (set [api] base_url for links)"}],
        dependencies=[Depends(authorize)],
        redirect_slashes=False,  # slashes.TrailingSlash redirects without the Host header
    )
    app.state.ctx = AppContext(settings, sessions, clock, publisher, metrics)
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    registry.register(FleetCollector(sessions))
    app.state.registry = registry
    app.state.auth_throttle = FailureWindow(
        limit=settings.api.auth_failure_limit,
        window_s=settings.api.auth_failure_window_s,
        block_s=settings.api.auth_block_s,
    )
    app.state.auth_failures = Counter(
        "fleet_api_auth_failures",
        "Requests refused for an unknown, revoked or expired token",
        ["reason"],
        registry=registry,
    )
    install_error_handlers(app)
    install_support(app, sessions, registry, clock)

    @app.middleware("http")
    async def _request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        rid = request_id(request)
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    modules = (system, devices, alarms, admin, credentials, recalls, warranty, rma, analytics)
    routers = [m.router for m in modules] + [deployments.router, rollouts.router]
    routers += [webhooks.router, groups.router, software.router, tickets.router]
    routers += [users.router, charts.router]
    routers.append(tuf_router(settings.updates.repo_dir))
    for router in routers:
        app.include_router(router)
    app.mount("/console", create_console(app.state.ctx))
    _document_security(app)
    # The routes as declared (the middlewares match raw requests against them), added
    # last = outermost: headers on every answer, caps before any body is read.
    api_routes = [route for r in routers for route in r.routes if isinstance(route, APIRoute)]
    app.add_middleware(TrailingSlash, routes=api_routes)
    app.add_middleware(BodyLimit, settings=settings, routes=api_routes)
    app.add_middleware(SecurityHeaders)
    return app


def _document_security(app: FastAPI) -> None:
    """Generate the OpenAPI schema with the bearer scheme declared per operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_rollout_components(declare_security(generate()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def route_table(app: FastAPI) -> list[tuple[str, str]]:
    """``(METHOD, path)`` of every documented route, read from the OpenAPI schema (the
    public contract, so this does not depend on FastAPI's internal routing classes)."""
    out: list[tuple[str, str]] = []
    for path, item in app.openapi()["paths"].items():
        out += [(method.upper(), path) for method in item if method != "parameters"]
    return sorted(out)
