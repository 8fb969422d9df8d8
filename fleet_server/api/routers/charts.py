"""``/api/v1/fleet/overview`` and ``/api/v1/devices/{id}/series``: what the console draws.

The console's overview and device charts call the same service functions, so a script
(or a test) reads exactly the numbers and points a person sees.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from fleet_server.api.deps import Db, context
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.services import fleet_views, series

router = APIRouter(prefix="/api/v1", tags=["charts"], responses=ERROR_RESPONSES)


@router.get("/fleet/overview", summary="The console overview's counters and series")
def overview(request: Request, session: Db) -> dict[str, Any]:
    """Presence, problem counters (each with the device-list query listing its devices),
    software versions per model, active rollouts and open alarms over 7 days."""
    return fleet_views.fleet_overview(session, context(request).clock())


@router.get("/devices/{device_id}/series", summary="One health signal, downsampled")
def device_series(
    device_id: str,
    signal: str,
    since: datetime,
    until: datetime,
    session: Db,
    max_points: Annotated[int, Query(ge=1, le=series.MAX_POINTS)] = series.MAX_POINTS,
) -> dict[str, Any]:
    """At most ``max_points`` ``[ts, value]`` points of ``signal`` in ``[since, until)``:
    raw samples when they fit, else SQL averages per bucket (hourly aggregates beyond
    two days for the signals retention keeps)."""
    return series.signal_series(
        session,
        device_id,
        signal,
        since=since.timestamp(),
        until=until.timestamp(),
        max_points=max_points,
    )
