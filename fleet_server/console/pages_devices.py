"""The device registry list (filters, sort, paging in the URL) and the device page:
identity, live vitals, health-signal charts over a chosen range, one timeline, and the
commands the viewer's role allows (with a confirmation)."""

from __future__ import annotations

from datetime import date
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Form, Signed, Viewer
from fleet_server.console.web import PREFIX, page_params, pager, query_value, render
from fleet_server.domain.roles import COMMAND_ROLES, Role
from fleet_server.errors import ForbiddenError, InvalidInputError
from fleet_server.services import (
    alarms,
    commands,
    composition,
    device_timeline,
    fleet_views,
    registry,
    series,
    software_views,
    tickets,
)
from fleet_server.services.registry import DeviceFilter
from protocol import SIGNALS

router = APIRouter()

TEXT_FILTERS = (
    "device_id",
    "device_id_prefix",
    "serial",
    "model",
    "hw_revision",
    "batch",
    "region",
    "owner",
    "channel",
    "status",
    "software_version",
    "presence",
)
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
RANGES["90d"] = 90 * 86400
CHARTED = ("temp_c", "cpu_pct", "mem_pct", "disk_pct", "wifi_signal_dbm", "agent_rss_mb")
LABELS = {s.name: (s.label, s.unit) for s in SIGNALS}


def _date(request: Request, name: str) -> date | None:
    value = query_value(request, name)
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError("validation_error", f"{name}: not a date (YYYY-MM-DD)") from None


def device_query(request: Request) -> fleet_views.DeviceQuery:
    """The list's query from the URL: every registry filter, the overview's problem
    filters, the sort column and direction."""
    filt = DeviceFilter(**{name: query_value(request, name) for name in TEXT_FILTERS})
    tags = query_value(request, "tag")
    filt.tags = [t.strip() for t in tags.split(",") if t.strip()] if tags else []
    faults = query_value(request, "has_open_faults")
    filt.has_open_faults = None if faults is None else faults == "true"
    filt.produced_from = _date(request, "produced_from")
    filt.produced_to = _date(request, "produced_to")
    return fleet_views.DeviceQuery(
        filt,
        last_update_failed=query_value(request, "last_update") == "failed",
        in_open_recall=query_value(request, "recall") == "open",
        quarantined=query_value(request, "quarantine") == "yes",
        sort=query_value(request, "sort") or "device_id",
        descending=query_value(request, "dir") == "desc",
        include_decommissioned=query_value(request, "include_decommissioned") == "true",
    )


@router.get("/devices")
def device_list(request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """The registry, filtered, sorted and paged as the URL says (``advisory``: only the
    devices exposed to that advisory; ``group``: only the members of that saved group,
    so a group is a saved view)."""
    query = device_query(request)
    advisory = query_value(request, "advisory")
    group = query_value(request, "group")
    if advisory:
        page = software_views.exposed_device_page(session, query, advisory, page_params(request))
    else:
        page = fleet_views.device_page(session, query, page_params(request), group=group)
    return render(
        request,
        "devices.html",
        page=page,
        pager=pager(page),
        query=query,
        filters=TEXT_FILTERS,
        sortable=fleet_views.SORTABLE,
        advisory=advisory,
        group=group or "",
    )


def _range(request: Request) -> tuple[str, float, float]:
    name = query_value(request, "range") or "24h"
    if name not in RANGES:
        raise InvalidInputError("validation_error", f"range: one of {', '.join(RANGES)}")
    until = context(request).clock()
    return name, until - RANGES[name], until


@router.get("/devices/{device_id}")
def device_page(device_id: str, request: Request, session: Db, who: Viewer) -> HTMLResponse:
    """Identity and registry data, live vitals, charts, timeline, alarms, tickets,
    software components, commands."""
    device = registry.device_view(registry.get_device(session, device_id))
    name, since, until = _range(request)
    drawn = series.signals_series(session, device_id, list(CHARTED), since=since, until=until)
    charts = [
        {
            "id": f"chart-{signal}",
            "label": LABELS[signal][0],
            "unit": LABELS[signal][1],
            "series": drawn[signal],
        }
        for signal in CHARTED
    ]
    open_alarms = alarms.list_alarms(
        session, alarms.AlarmFilter(device_id=device_id), page_params(request, 20)
    )
    allowed = [k for k, role in COMMAND_ROLES.items() if Role(who.user.role).allows(role)]
    return render(
        request,
        "device.html",
        device=device,
        charts=charts,
        range_name=name,
        ranges=list(RANGES),
        since=since,
        until=until,
        timeline=device_timeline.timeline(session, device_id),
        alarms=open_alarms.items,
        commands=allowed,
        tickets=tickets.list_tickets(
            session,
            tickets.TicketFilter(device_id=device_id),
            page_params(request, 20),
            now=context(request).clock(),
        ),
        software=composition.device_components(session, device_id),
    )


@router.get("/devices/{device_id}/live")
def device_live(device_id: str, request: Request, session: Db, _who: Viewer) -> HTMLResponse:
    """The device's presence and latest vitals, for htmx polling."""
    device = registry.device_view(registry.get_device(session, device_id))
    return render(request, "_device_live.html", device=device)


@router.post("/devices/{device_id}/commands")
def send_command(
    device_id: str, request: Request, session: Db, who: Signed, form: Form
) -> Response:
    """Send a command the user's role allows (the API's rules: COMMAND_ROLES)."""
    kind = str(form.get("kind", ""))
    if kind not in COMMAND_ROLES:
        raise InvalidInputError("validation_error", f"kind: one of {', '.join(COMMAND_ROLES)}")
    needed = COMMAND_ROLES[kind]
    if not Role(who.user.role).allows(needed):
        raise ForbiddenError("forbidden", f"role {who.user.role} may not send {kind}")
    ctx = context(request)
    commands.send_to_device(
        session,
        ctx.publisher,
        device_id,
        kind,
        actor=who.actor,
        now=ctx.clock(),
        ttl_s=ctx.settings.commands.default_ttl_s,
        base_url=ctx.settings.public_base_url,
        diag_ttl_s=ctx.settings.diagnostics.token_ttl_s,
        reason="sent from the console",
    )
    return RedirectResponse(f"{PREFIX}/devices/{quote(device_id, safe='')}", status_code=303)
