"""What one device reported and was sent: telemetry, events, commands, diagnostics.

Each function finds the device (404 ``not_found`` when unknown) and returns one page,
newest first, shaped as the API shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from fleet_server.db.models import (
    CommandRecord,
    DeviceEvent,
    DiagnosticBundle,
    TelemetryHourly,
    TelemetrySample,
)
from fleet_server.services import alarms
from fleet_server.services.commands import bundle_view, command_view
from fleet_server.services.paging import Page, PageParams, fetch_page
from fleet_server.services.registry import get_device

HOURLY_LIMIT = 1000
"""At most this many hourly aggregates beside a telemetry page."""


@dataclass(frozen=True)
class TelemetryWindow:
    """Raw samples (one page) and the hourly aggregates of the same time window."""

    samples: Page[dict[str, Any]]
    hourly: list[dict[str, Any]]


def _columns(row: Any, skip: str = "device_key") -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in type(row).__table__.columns if c.key != skip}


def telemetry(
    session: Session,
    device_id: str,
    params: PageParams,
    *,
    since: float | None = None,
    until: float | None = None,
) -> TelemetryWindow:
    """Samples newest first in ``[since, until)`` and the hourly rows of that window."""
    device = get_device(session, device_id)
    t, h = TelemetrySample, TelemetryHourly
    samples = select(t).where(t.device_key == device.id).order_by(t.ts.desc())
    hourly = select(h).where(h.device_key == device.id).order_by(h.hour.desc())
    if since is not None:
        samples = samples.where(t.ts >= since)
        hourly = hourly.where(h.hour >= int(since) // 3600 * 3600)
    if until is not None:
        samples = samples.where(t.ts < until)
        hourly = hourly.where(h.hour < until)
    page = fetch_page(session, samples, params, scalars=True).map(_columns)
    hours = session.execute(hourly.limit(HOURLY_LIMIT)).scalars()
    return TelemetryWindow(page, [_columns(row, skip="") for row in hours])


def events(
    session: Session, device_id: str, params: PageParams, *, kind: str | None = None
) -> Page[dict[str, Any]]:
    """Events newest first, optionally of one ``kind`` (``fault_raised``, ``boot``...)."""
    device = get_device(session, device_id)
    e = DeviceEvent
    query = select(e).where(e.device_key == device.id).order_by(e.ts.desc(), e.id.desc())
    if kind:
        query = query.where(e.kind == kind)
    return fetch_page(session, query, params, scalars=True).map(_columns)


def device_alarms(session: Session, device_id: str, params: PageParams) -> Page[dict[str, Any]]:
    """Open and cleared alarms of the device, newest first."""
    return alarms.device_alarms(session, get_device(session, device_id), params)


def commands(session: Session, device_id: str, params: PageParams) -> Page[dict[str, Any]]:
    """Commands sent to the device and their status, newest first."""
    device = get_device(session, device_id)
    c = CommandRecord
    query = select(c).where(c.device_key == device.id).order_by(c.created_at.desc())
    page = fetch_page(session, query, params, scalars=True)
    return page.map(lambda record: command_view(record, device.device_id))


def diagnostics(session: Session, device_id: str, params: PageParams) -> Page[dict[str, Any]]:
    """Diagnostics requested from the device, newest first (metadata, not the bytes)."""
    device = get_device(session, device_id)
    b = DiagnosticBundle
    query = (
        select(b)
        .options(defer(b.content))
        .where(b.device_key == device.id)
        .order_by(b.created_at.desc())
    )
    return fetch_page(session, query, params, scalars=True).map(bundle_view)
