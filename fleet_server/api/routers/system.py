"""``/healthz``, ``/readyz``, ``/metrics`` and diagnostics transfer (upload by device, download)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session

from fleet_server import __version__
from fleet_server.api.deps import context, get_session, read_body, stamp
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas import Health, Readiness, UploadOut
from fleet_server.security_mode import DEMO_HEALTH_WARNING
from fleet_server.services.commands import check_upload_token, store_upload, uploaded_bundle
from fleet_server.services.health import database_answers
from fleet_server.services.ingest_health import readiness

router = APIRouter(tags=["system"], responses=ERROR_RESPONSES)


@router.get("/healthz", response_model=Health, summary="Liveness (no token needed)")
def healthz(request: Request, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """``ok`` when the database answers; exposes no device data. In demo mode it carries
    the insecure-mode warning, so nobody mistakes a demo for a production server."""
    ctx = context(request)
    db_ok = database_answers(session)
    mode = ctx.settings.security.mode
    status = ctx.metrics.status if ctx.metrics is not None else None
    ingest = status.view(ctx.clock()) if status is not None else None
    return {
        "status": "ok" if db_ok and (ingest is None or ingest["ready"]) else "degraded",
        "database": db_ok,
        "version": __version__,
        "mode": mode,
        "warning": DEMO_HEALTH_WARNING if mode == "demo" else None,
        "ingest": ingest,
    }


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness (no token needed): 503 with reasons when not ready",
    responses={503: {"model": Readiness, "description": "not ready, with the reasons"}},
)
def readyz(
    request: Request, response: Response, session: Annotated[Session, Depends(get_session)]
) -> dict[str, Any]:
    """200 when the database answers and this process's ingest (if it runs one) is
    connected, hears the broker's heartbeat, commits what it receives and is not being
    knocked off by another client using its id; otherwise 503 with the reasons."""
    ctx = context(request)
    reasons = [] if database_answers(session) else ["the database does not answer"]
    status = ctx.metrics.status if ctx.metrics is not None else None
    if status is not None:
        reasons += [f"ingest: {r}" for r in readiness(status, ctx.clock())]
    if reasons:
        response.status_code = 503
    return {"ready": not reasons, "reasons": reasons}


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
    """The URL was sent in the ``collect_diagnostics`` command; it works once. The token
    is checked before the body is read."""
    ctx = context(request)
    limit = ctx.settings.diagnostics.max_bytes
    check_upload_token(session, token, ctx.clock())
    body = await read_body(request, limit)
    bundle = store_upload(
        session,
        token,
        body,
        content_type=request.headers.get("content-type"),
        **stamp(request),
        max_bytes=limit,
    )
    return {"id": bundle.id, "size": bundle.size, "sha256": bundle.sha256}


@router.get(
    "/api/v1/diagnostics/{bundle_id}",
    summary="Download a diagnostics bundle",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "the bundle"}},
)
def download(bundle_id: int, session: Annotated[Session, Depends(get_session)]) -> Response:
    """The uploaded bytes, as the device sent them, always as an
    ``application/octet-stream`` attachment: the device chose the stored content type, so
    serving it would let a device make a browser render HTML or script from this origin."""
    bundle = uploaded_bundle(session, bundle_id)
    return Response(
        bundle.content,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="diagnostics-{bundle_id}.bin"'},
    )
