"""The fleet overview (live) and the alarm list its counters link to."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Viewer
from fleet_server.console.ingest_panel import ingest_health
from fleet_server.console.web import page_params, pager, query_value, render
from fleet_server.services import alarms, fleet_views

router = APIRouter()


@router.get("/")
def overview(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Presence, problem counters (each a link to its list), versions per model, active
    rollouts and open alarms over 7 days; the counters refresh every few seconds."""
    ctx = context(request)
    data = fleet_views.fleet_overview(session, ctx.clock())
    ingest = ingest_health(ctx.metrics, ctx.clock())
    return render(request, "overview.html", data=data, ingest=ingest)


@router.get("/overview/live")
def overview_live(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """The overview's changing part, for htmx polling."""
    ctx = context(request)
    data = fleet_views.fleet_overview(session, ctx.clock())
    ingest = ingest_health(ctx.metrics, ctx.clock())
    return render(request, "_overview_live.html", data=data, ingest=ingest)


@router.get("/alarms")
def alarm_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """Alarms, filtered by state, severity, code and device (newest first)."""
    filt = alarms.AlarmFilter(
        state=query_value(request, "state") or "open",
        severity=query_value(request, "severity"),
        code=query_value(request, "code"),
        device_id=query_value(request, "device_id"),
    )
    page = alarms.list_alarms(session, filt, page_params(request))
    return render(request, "alarms.html", page=page, pager=pager(page), filt=filt)
