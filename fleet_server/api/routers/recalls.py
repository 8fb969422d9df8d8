"""``/api/v1/recalls``: recall campaigns, their frozen population, progress and exports."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    context,
    page_body,
    page_params,
    read_text_body,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.routers.devices import MAX_CSV_BYTES
from fleet_server.api.schemas_recalls import (
    BlockedVersions,
    OutcomesImported,
    RecallAdded,
    RecallExplain,
    RecallMember,
    RecallMemberPage,
    RecallOut,
    RecallPage,
    RecallPreview,
    RecallProgress,
    RemedyTargets,
    SafeModeResult,
)
from fleet_server.services import recall_outcomes, safe_mode
from fleet_server.services import recalls as svc

router = APIRouter(prefix="/api/v1/recalls", tags=["recalls"], responses=ERROR_RESPONSES)


class RecallIn(BaseModel):
    """A new recall campaign (draft)."""

    id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="e.g. RC-2026-001")
    title: str = Field(min_length=1, max_length=256)
    description: str = Field(default="", max_length=10000)
    scope: dict[str, Any] = Field(
        description="clauses (AND): models, hw_revisions, batches, software_versions "
        "(lists), serial_range {from,to}, production_window {from,to} (dates)"
    )
    remedy_version: str | None = Field(default=None, max_length=64)
    blocked_versions: list[str] = Field(default_factory=list, max_length=100)
    physical_action: str | None = Field(default=None, description="return, replace or inspect")
    safety_critical: bool = False


class AddDevicesIn(BaseModel):
    """Devices found after opening, added explicitly."""

    device_ids: list[str] = Field(min_length=1, max_length=10000)


class DeviceStateIn(BaseModel):
    """A member's next state."""

    state: str = Field(description="remedied, not_needed, unreachable or notified")
    note: str = Field(default="", max_length=2000)
    via: str | None = Field(default=None, max_length=32, description="how it was remedied")


class RolloutLinkIn(BaseModel):
    """The rollout carrying the software remedy (exempt from the recall hold)."""

    rollout_id: str | None = Field(max_length=64)


class SafeModeIn(BaseModel):
    """Push the signed safe-mode command to a safety recall's members still notified."""

    reason: str = Field(min_length=1, max_length=200)


@router.get("", response_model=RecallPage, summary="List recall campaigns")
def list_recalls(
    *, params: Annotated[PageParams, Depends(page_params)], state: str | None = None, session: Db
) -> dict[str, Any]:
    """Campaigns, newest first, with their completion."""
    return page_body(svc.list_campaigns(session, params, state))


@router.post("", status_code=201, response_model=RecallOut, summary="Draft a recall campaign")
def create_recall(*, body: RecallIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Validate the scope and remedies and store a draft (nothing is frozen yet)."""
    return svc.draft_campaign(
        session,
        actor,
        campaign_id=body.id,
        title=body.title,
        scope=body.scope,
        **stamp(request),
        description=body.description,
        remedy_version=body.remedy_version,
        blocked_versions=body.blocked_versions,
        physical_action=body.physical_action,
        safety_critical=body.safety_critical,
    )


@router.get(
    "/blocked-versions", response_model=BlockedVersions, summary="Versions blocked by recalls"
)
def get_blocked_versions(*, session: Db) -> dict[str, Any]:
    """Version -> campaign; deployments and rollouts refuse to target these."""
    return {"blocked": svc.blocked_versions(session)}


@router.get("/{campaign_id}", response_model=RecallOut, summary="One recall campaign")
def get_recall(*, campaign_id: str, session: Db) -> dict[str, Any]:
    """The campaign, its remedies and completion (raw and adjusted rates, labelled)."""
    return svc.show_campaign(session, campaign_id)


@router.get(
    "/{campaign_id}/preview",
    response_model=RecallPreview,
    summary="Devices the scope matches now",
)
def preview_recall(*, campaign_id: str, session: Db) -> dict[str, Any]:
    """For a draft: the population opening would freeze; for an open campaign: devices
    matching now that are not in the frozen population (candidates for ``add``)."""
    return svc.preview_recall(session, campaign_id)


@router.post("/{campaign_id}/open", response_model=RecallOut, summary="Open: freeze the population")
def open_recall(*, campaign_id: str, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Freeze every matching device with its reason; version blocks take effect."""
    return svc.open_recall(session, actor, campaign_id, **stamp(request))


@router.post("/{campaign_id}/close", response_model=RecallOut, summary="Close an open campaign")
def close_recall(*, campaign_id: str, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Close (open campaigns) or cancel (drafts); version blocks of a closed campaign stay."""
    return svc.close_recall(session, actor, campaign_id, **stamp(request))


@router.post(
    "/{campaign_id}/devices",
    response_model=RecallAdded,
    summary="Add devices found after opening",
)
def add_recall_devices(
    *, campaign_id: str, body: AddDevicesIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """All or nothing: each device must exist, be new and match the predicate now."""
    return svc.add_recall_devices(
        session,
        actor,
        campaign_id,
        body.device_ids,
        **stamp(request),
    )


@router.get(
    "/{campaign_id}/devices", response_model=RecallMemberPage, summary="The frozen population"
)
def list_recall_devices(
    *,
    campaign_id: str,
    params: Annotated[PageParams, Depends(page_params)],
    state: str | None = None,
    session: Db,
) -> dict[str, Any]:
    """Members with their state and matching reason."""
    return page_body(svc.list_members(session, campaign_id, params, state))


@router.get(
    "/{campaign_id}/devices/{device_id}",
    response_model=RecallExplain,
    summary="Explain one device",
)
def explain_recall_device(*, campaign_id: str, device_id: str, session: Db) -> dict[str, Any]:
    """Why the device is (or is not) in the recall: frozen reason, state, and the
    predicate evaluated now clause by clause."""
    return svc.explain_member(session, campaign_id, device_id)


@router.post(
    "/{campaign_id}/devices/{device_id}/state",
    response_model=RecallMember,
    summary="Set a member's state",
)
def set_recall_device_state(
    *,
    campaign_id: str,
    device_id: str,
    body: DeviceStateIn,
    request: Request,
    session: Db,
    actor: Who,
) -> dict[str, Any]:
    """Record a remedy, an inspection that found nothing, or an unreachable device."""
    return svc.move_member(
        session,
        actor,
        campaign_id,
        device_id,
        body.state,
        **stamp(request),
        note=body.note,
        via=body.via,
    )


@router.put(
    "/{campaign_id}/remedy-rollout",
    response_model=RecallOut,
    summary="Link the software remedy rollout",
)
def link_remedy_rollout(
    *, campaign_id: str, body: RolloutLinkIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """The rollout of the fixing bundle; it may target the campaign's held devices."""
    return svc.link_remedy_rollout(
        session,
        actor,
        campaign_id,
        body.rollout_id,
        **stamp(request),
    )


@router.get(
    "/{campaign_id}/remedy-targets",
    response_model=RemedyTargets,
    summary="Devices still needing the software fix",
)
def remedy_targets(*, campaign_id: str, session: Db) -> dict[str, Any]:
    """What the remedy rollout should target (members not yet on the remedy version)."""
    return svc.remedy_targets(session, campaign_id)


@router.post(
    "/{campaign_id}/outcomes",
    response_model=OutcomesImported,
    summary="Import member outcomes from a field-service CSV (all rows or none)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "header row then one member per line; columns: device_id (or "
            "serial), state, note, via",
        }
    },
)
async def import_outcomes(
    *, campaign_id: str, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Every row checked; any bad row rejects the file with its line and column."""
    text = await read_text_body(request, MAX_CSV_BYTES, "invalid_csv", "CSV")
    return recall_outcomes.import_outcomes(
        session,
        actor,
        campaign_id,
        text,
        **stamp(request),
    )


@router.get(
    "/{campaign_id}/progress", response_model=RecallProgress, summary="Completion over time"
)
def progress(*, campaign_id: str, request: Request, session: Db) -> dict[str, Any]:
    """Current completion computed now (members gone silent count as unreachable at
    once) and the snapshot series, raw and adjusted rates labelled."""
    ctx = context(request)
    return svc.progress(
        session, campaign_id, now=ctx.clock(), offline_days=ctx.settings.recalls.offline_days
    )


CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "CSV with a header row",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


def _csv(body: str, filename: str) -> Response:
    return Response(
        body,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get(
    "/{campaign_id}/export/affected.csv",
    response_class=Response,
    responses=CSV_ANSWER,
    summary="Affected list as CSV",
)
def export_affected(*, campaign_id: str, session: Db) -> Response:
    """One row per population member with state and matching reason."""
    return _csv(svc.export_affected(session, campaign_id), f"{campaign_id}-affected.csv")


@router.get(
    "/{campaign_id}/export/progress.csv",
    response_class=Response,
    responses=CSV_ANSWER,
    summary="Progress report as CSV",
)
def export_progress(*, campaign_id: str, session: Db) -> Response:
    """The snapshot series with both rates, columns named with their definitions."""
    return _csv(svc.export_progress(session, campaign_id), f"{campaign_id}-progress.csv")


@router.post(
    "/{campaign_id}/safe-mode",
    response_model=SafeModeResult,
    summary="Send the signed safe-mode command",
)
def send_safe_mode(
    *, campaign_id: str, body: SafeModeIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Admin only: every member still notified of an open safety-critical recall gets a
    safe-mode command signed with the server's safety key; acks show on the device's
    commands (completed = in safe mode, rejected not_permitted = signature refused)."""
    ctx = context(request)
    return safe_mode.send_for_recall(
        session,
        ctx.publisher,
        ctx.settings.recalls.safety_key,
        campaign_id,
        actor,
        reason=body.reason,
        **stamp(request),
        ttl_s=ctx.settings.recalls.safe_mode_ttl_s,
    )
