"""``/api/v1/devices``: the registry, per-device telemetry, events, alarms and commands."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from sqlalchemy.orm import Session

from fleet_server.api.deps import (
    PageParams,
    context,
    current_actor,
    get_session,
    page_body,
    page_params,
    read_text_body,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from fleet_server.api.schemas import (
    AlarmOut,
    CommandIn,
    CommandOut,
    DecommissionIn,
    DeviceIn,
    DeviceOut,
    DevicePatch,
    DiagnosticsBundleOut,
    EventOut,
    ImportResult,
    Page,
    TelemetryPage,
)
from fleet_server.domain.roles import COMMAND_ROLES, Role
from fleet_server.services import commands, device_history, registry
from fleet_server.services.audit import Actor
from fleet_server.services.decommission import decommission_and_revoke
from fleet_server.services.registry import DeviceFilter, device_view

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)

MAX_CSV_BYTES = 20 * 1024 * 1024


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


@router.get("", response_model=Page[DeviceOut], summary="List devices (filter on any field)")
def list_devices(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
    device_id: str | None = None,
    device_id_prefix: str | None = None,
    serial: str | None = None,
    model: str | None = None,
    hw_revision: str | None = None,
    batch: str | None = None,
    region: str | None = None,
    owner: str | None = None,
    channel: str | None = None,
    status: Annotated[str | None, Query(pattern="^(active|decommissioned)$")] = None,
    software_version: str | None = None,
    slot: str | None = None,
    presence: Annotated[str | None, Query(pattern="^(online|offline|unknown)$")] = None,
    tag: Annotated[list[str] | None, Query(description="device must carry every given tag")] = None,
    has_open_faults: bool | None = None,
    produced_from: date | None = None,
    produced_to: date | None = None,
    activated_from: date | None = None,
    activated_to: date | None = None,
    seen_after: datetime | None = None,
    seen_before: datetime | None = None,
) -> dict[str, Any]:
    """Devices matching every given filter, ordered by device id."""
    filt = DeviceFilter(
        device_id=device_id,
        device_id_prefix=device_id_prefix,
        serial=serial,
        model=model,
        hw_revision=hw_revision,
        batch=batch,
        region=region,
        owner=owner,
        channel=channel,
        status=status,
        software_version=software_version,
        slot=slot,
        presence=presence,
        tags=tag or [],
        has_open_faults=has_open_faults,
        produced_from=produced_from,
        produced_to=produced_to,
        activated_from=activated_from,
        activated_to=activated_to,
        seen_after=_ts(seen_after),
        seen_before=_ts(seen_before),
    )
    return page_body(registry.list_devices(session, filt, params).map(device_view))


@router.post("", response_model=DeviceOut, status_code=201, summary="Register one device")
def create_device(
    *,
    body: DeviceIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Register a device; 409 when its id or serial is taken."""
    device = registry.create_device(
        session,
        body.model_dump(exclude_none=True),
        actor=actor,
        **stamp(request),
    )
    return device_view(device)


@router.post(
    "/import",
    response_model=ImportResult,
    summary="Import the factory CSV (all rows or none)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "header row then one device per line; columns: device_id "
            "(required), serial, model, hw_revision, batch, production_date, "
            "activation_date, region, owner, channel, tags (';'-separated)",
        }
    },
)
async def import_devices(
    *,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Validate every row first; any error rejects the whole file with per-row details."""
    text = await read_text_body(request, MAX_CSV_BYTES, "invalid_csv", "CSV")
    count = registry.import_csv(session, text, actor=actor, **stamp(request))
    return {"imported": count}


@router.get("/{device_id}", response_model=DeviceOut, summary="Show one device")
def get_device(device_id: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """Everything the registry knows about the device."""
    return device_view(registry.get_device(session, device_id))


@router.patch("/{device_id}", response_model=DeviceOut, summary="Change registry fields")
def patch_device(
    *,
    device_id: str,
    body: DevicePatch,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Update the given fields (audited with before and after)."""
    device = registry.update_device(
        session,
        device_id,
        body.model_dump(exclude_unset=True),
        actor=actor,
        **stamp(request),
    )
    return device_view(device)


@router.post(
    "/{device_id}/decommission", response_model=DeviceOut, summary="Take a device out of service"
)
def decommission(
    *,
    device_id: str,
    request: Request,
    body: Annotated[DecommissionIn, Body(default_factory=DecommissionIn)],
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Its messages are rejected from now on; its history stays."""
    ctx = context(request)
    device = decommission_and_revoke(
        session,
        ctx.settings,
        device_id,
        actor=actor,
        **stamp(request),
        reason=body.reason,
    )
    return device_view(device)


@router.post(
    "/{device_id}/unquarantine",
    response_model=DeviceOut,
    summary="Forget the versions that failed on a device",
)
def unquarantine(
    *,
    device_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Failures finished before now no longer exclude the device from rollouts."""
    device = registry.unquarantine_device(
        session,
        device_id,
        actor=actor,
        **stamp(request),
    )
    return device_view(device)


@router.get("/{device_id}/telemetry", response_model=TelemetryPage, summary="Telemetry samples")
def telemetry(
    *,
    device_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    since: datetime | None = None,
    until: datetime | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Raw samples newest first, and hourly aggregates of the same window."""
    window = device_history.telemetry(
        session, device_id, params, since=_ts(since), until=_ts(until)
    )
    return {**page_body(window.samples), "hourly": window.hourly}


@router.get("/{device_id}/events", response_model=Page[EventOut], summary="Device events")
def events(
    *,
    device_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    kind: str | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Events newest first, optionally of one kind (``fault_raised``, ``boot``...)."""
    return page_body(device_history.events(session, device_id, params, kind=kind))


@router.get("/{device_id}/alarms", response_model=Page[AlarmOut], summary="Device alarm history")
def device_alarms(
    *,
    device_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Open and cleared alarms of the device, newest first."""
    return page_body(device_history.device_alarms(session, device_id, params))


@router.get("/{device_id}/commands", response_model=Page[CommandOut], summary="Commands sent")
def list_commands(
    *,
    device_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Commands sent to the device and their status, newest first."""
    return page_body(device_history.commands(session, device_id, params))


@router.post(
    "/{device_id}/commands",
    response_model=CommandOut,
    status_code=202,
    summary="Send a command (reboot: operator+, collect_diagnostics: technician+)",
    responses={503: {"model": ErrorBody, "description": "the MQTT broker is unavailable"}},
)
def post_command(
    *,
    device_id: str,
    body: CommandIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Publish the command with QoS 1; the device's acks update its status."""
    needed = COMMAND_ROLES[body.kind]
    if not Role(actor.role).allows(needed):
        raise ApiError(
            403, "forbidden", f"role {actor.role} may not send {body.kind}; needs {needed.value}"
        )
    ctx = context(request)
    return commands.send_to_device(
        session,
        ctx.publisher,
        device_id,
        body.kind,
        actor=actor,
        **stamp(request),
        ttl_s=body.ttl_s or ctx.settings.commands.default_ttl_s,
        base_url=ctx.settings.public_base_url,
        diag_ttl_s=ctx.settings.diagnostics.token_ttl_s,
        reason=body.reason,
    )


@router.get(
    "/{device_id}/diagnostics",
    response_model=Page[DiagnosticsBundleOut],
    summary="Diagnostics bundles",
)
def list_bundles(
    *,
    device_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Diagnostics requested from the device, newest first (metadata only)."""
    return page_body(device_history.diagnostics(session, device_id, params))
