"""``/healthz``, ``/metrics`` and diagnostics transfer (upload by device, download)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.orm import Session

from fleet_server import __version__
from fleet_server.api.deps import context, get_session, request_id
from fleet_server.api.errors import ERROR_RESPONSES, ApiError
from fleet_server.api.routers.devices import _read_limited
from fleet_server.api.schemas import Health, UploadOut
from fleet_server.db.models import DiagnosticBundle
from fleet_server.security_mode import DEMO_HEALTH_WARNING
from fleet_server.services.commands import store_upload

router = APIRouter(tags=["system"], responses=ERROR_RESPONSES)


@router.get("/healthz", response_model=Health, summary="Liveness (no token needed)")
def healthz(request: Request, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """``ok`` when the database answers; exposes no device data. In demo mode it carries
    the insecure-mode warning, so nobody mistakes a demo for a production server."""
    try:
        session.execute(text("SELECT 1"))
        db_ok = True
    except Exception:
        db_ok = False
    mode = context(request).settings.security.mode
    return {
        "status": "ok" if db_ok else "degraded",
        "database": db_ok,
        "version": __version__,
        "mode": mode,
        "warning": DEMO_HEALTH_WARNING if mode == "demo" else None,
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics (no token needed)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
)
def metrics(request: Request) -> Response:
    """Ingest counters and lag, fleet presence and alarm counts; no per-device data."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/api/v1/diagnostics/upload/{token}",
    response_model=UploadOut,
    status_code=201,
    summary="Device uploads a diagnostics bundle (one-time token in the URL)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload(
    *, token: str, request: Request, session: Annotated[Session, Depends(get_session)]
) -> dict[str, Any]:
    """The URL was sent in the ``collect_diagnostics`` command; it works once."""
    ctx = context(request)
    limit = ctx.settings.diagnostics.max_bytes
    body = await _read_limited(request, limit)
    bundle = store_upload(
        session,
        token,
        body,
        content_type=request.headers.get("content-type"),
        now=ctx.clock(),
        max_bytes=limit,
        request_id=request_id(request),
    )
    session.commit()
    return {"id": bundle.id, "size": bundle.size, "sha256": bundle.sha256}


@router.get(
    "/api/v1/diagnostics/{bundle_id}",
    summary="Download a diagnostics bundle",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the bundle"}},
)
def download(bundle_id: int, session: Annotated[Session, Depends(get_session)]) -> Response:
    """The uploaded bytes, as the device sent them."""
    bundle = session.get(DiagnosticBundle, bundle_id)
    if bundle is None or bundle.content is None:
        raise ApiError(404, "not_found", f"diagnostics bundle {bundle_id} has no upload")
    return Response(
        bundle.content,
        media_type=bundle.content_type or "application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="diagnostics-{bundle_id}.bin"'},
    )
