"""Support's hooks into the app: the SLA gauges at ``/metrics`` and the middleware that
records every API request's outcome and latency for the service SLOs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from fleet_server.services.clock import Clock
from fleet_server.services.sla import SlaCollector
from fleet_server.services.slo import RequestRecorder


def install_support(
    app: FastAPI, sessions: sessionmaker[Session], registry: CollectorRegistry, clock: Clock
) -> RequestRecorder:
    """Register the SLA gauges and count ``/api/`` requests per minute (good = not 5xx;
    fast = within the latency objective); a finished minute is written once, off the
    event loop."""
    registry.register(SlaCollector(sessions, clock))
    recorder = RequestRecorder()
    app.state.slo_recorder = recorder

    @app.middleware("http")
    async def _record(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not request.url.path.startswith("/api/"):
            return await call_next(request)
        started = time.monotonic()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            now = float(clock())
            if recorder.observe(status, time.monotonic() - started, now):
                await run_in_threadpool(recorder.flush_due, sessions, now)

    return recorder
