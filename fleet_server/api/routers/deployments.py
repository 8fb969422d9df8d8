"""Bundles and deployments: ``/api/v1/bundles``, ``/api/v1/executions`` and
``POST /api/v1/devices/{device_id}/update``."""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from fleet_server.api.deps import (
    PageParams,
    context,
    current_actor,
    get_session,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas import Page
from fleet_server.errors import InvalidInputError, TooLargeError
from fleet_server.services import bundle_uploads, deployments
from fleet_server.services import bundles as catalog
from fleet_server.services.audit import Actor

router = APIRouter(tags=["deployments"], responses=ERROR_RESPONSES)

_CHUNK = 1024 * 1024


class BundleOut(BaseModel):
    """A published bundle (the catalogue row of a TUF target)."""

    name: str = Field(description="TUF target name")
    product: str
    model: str
    version: str
    hardware_revisions: list[str]
    release_counter: int
    channel: str
    min_agent_version: str
    sha256: str
    size: int
    published_at: datetime
    published_by: str
    preprod_completed_at: datetime | None
    manifest: dict[str, Any] | None = None


class UpdateIn(BaseModel):
    """Install a published bundle on one device."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(min_length=1, max_length=512, description="bundle (TUF target) name")
    timeouts: dict[str, float] | None = Field(
        default=None,
        description="per-phase silence limits in seconds: accept_s, download_s, install_s, "
        "reboot_s, commit_s (defaults from the server's [updates] section)",
    )


class CancelIn(BaseModel):
    """Why an execution is cancelled."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500)


class ExecutionEventOut(BaseModel):
    """One reported (or server-decided) state of an execution."""

    state: str
    device_ts: datetime | None
    received_at: datetime
    failure_class: str | None
    reason: str
    attack: str | None


class ExecutionOut(BaseModel):
    """One device's deployment of one bundle."""

    id: str
    device_id: str
    bundle: str
    version: str
    rollout_id: str | None
    wave: int | None
    status: Literal["pending", "sent", "in_progress", "committed", "failed", "cancelled"]
    phase: str
    phase_at: datetime
    failure_class: str | None
    reason: str
    attack: str | None
    command_id: str | None
    from_version: str | None
    timeouts: dict[str, float]
    created_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    created_by: str
    events: list[ExecutionEventOut] | None = None


async def _save_upload(request: Request, dest: Path, limit: int) -> str | None:
    """Write the uploaded bundle (multipart field ``file`` or the raw body) to ``dest``;
    returns the ``channel`` form field, if any."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise TooLargeError("too_large", f"upload is {declared} bytes; the limit is {limit}")
    size = 0
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInputError(
                "validation_error", "file: the multipart form has no file field"
            )
        with dest.open("wb") as out:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLargeError("too_large", f"bundle exceeds the limit of {limit} bytes")
                out.write(chunk)
        channel = form.get("channel")
        return channel if isinstance(channel, str) and channel else None
    with dest.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLargeError("too_large", f"bundle exceeds the limit of {limit} bytes")
            out.write(chunk)
    return None


@router.post(
    "/api/v1/bundles",
    response_model=BundleOut,
    status_code=201,
    summary="Upload, verify and publish a bundle",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "channel": {"type": "string"},
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def publish_bundle(
    *,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
    channel: Annotated[
        str | None,
        Query(description="channel to publish on (default: the manifest's, else production)"),
    ] = None,
) -> dict[str, Any]:
    """Verify the bundle (every file's size and hash, safe paths), publish it as a signed
    TUF target and record it in the catalogue. Publishing the same bytes again only
    changes the channel; other bytes under a published name are refused (409)."""
    ctx = context(request)
    repo = bundle_uploads.open_repository(ctx.settings)
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-upload-"))
    try:
        path = tmp / "bundle.tar.gz"
        form_channel = await _save_upload(request, path, ctx.settings.updates.max_bundle_bytes)
        return await run_in_threadpool(
            bundle_uploads.publish_upload,
            session,
            repo,
            path,
            channel=channel or form_channel,
            actor=actor,
            **stamp(request),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@router.get("/api/v1/bundles", response_model=Page[BundleOut], summary="List published bundles")
def list_bundles(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
    model: str | None = None,
    version: str | None = None,
    channel: str | None = None,
) -> dict[str, Any]:
    """Published bundles, newest first."""
    return page_body(
        catalog.list_bundles(session, catalog.BundleFilter(model, version, channel), params)
    )


@router.get("/api/v1/bundles/{name}", response_model=BundleOut, summary="Show one bundle")
def show_bundle(name: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """The bundle with its full manifest (payload, health check, SBOM)."""
    return catalog.bundle_view(catalog.get_bundle(session, name), with_manifest=True)


@router.post(
    "/api/v1/devices/{device_id}/update",
    response_model=ExecutionOut,
    status_code=202,
    summary="Install a published bundle on one device",
)
def update_device(
    *,
    device_id: str,
    body: UpdateIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Create an execution and send the ``Install`` command. Follow it with
    ``GET /api/v1/executions/{id}``: it succeeds only when the device reports
    ``committed`` and fails on a reported failure or silence past a phase timeout."""
    ctx = context(request)
    return deployments.request_update(
        session,
        ctx.publisher,
        device_id,
        body.bundle,
        actor=actor,
        **stamp(request),
        timeouts=body.timeouts,
        default_timeouts=ctx.settings.updates.default_timeouts(),
    )


@router.get("/api/v1/executions", response_model=Page[ExecutionOut], summary="List executions")
def list_executions(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    session: Annotated[Session, Depends(get_session)],
    device: Annotated[str | None, Query(description="device id")] = None,
    bundle: Annotated[str | None, Query(description="bundle name")] = None,
    rollout: Annotated[str | None, Query(description="rollout id")] = None,
    status: Annotated[
        str | None,
        Query(pattern="^(pending|sent|in_progress|committed|failed|cancelled)$"),
    ] = None,
) -> dict[str, Any]:
    """Executions matching every given filter, newest first."""
    return page_body(
        deployments.list_executions(
            session, params, device_id=device, bundle=bundle, rollout_id=rollout, status=status
        )
    )


@router.get(
    "/api/v1/executions/{execution_id}",
    response_model=ExecutionOut,
    summary="Show one execution with its history",
)
def show_execution(
    execution_id: str, session: Annotated[Session, Depends(get_session)]
) -> dict[str, Any]:
    """The execution and every state reported for it, oldest first."""
    return deployments.execution_detail(session, execution_id)


@router.post(
    "/api/v1/executions/{execution_id}/cancel",
    response_model=ExecutionOut,
    summary="Cancel a pending or sent execution",
)
def cancel_execution(
    *,
    execution_id: str,
    request: Request,
    body: Annotated[CancelIn, Body(default_factory=CancelIn)],
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Only before the device started working on it (409 otherwise)."""
    return deployments.cancel_execution(
        session,
        execution_id,
        actor=actor,
        **stamp(request),
        reason=body.reason,
    )
