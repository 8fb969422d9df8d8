"""Software composition: ``/api/v1/bundles/{name}/components|licence-review|vex``,
``/api/v1/releases/{version}/notices``, ``/api/v1/licence-policies``,
``/api/v1/inventory``, ``/api/v1/devices/{device_id}/components`` and
``/api/v1/advisories``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, Field

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    page_body,
    page_params,
    read_body,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.services import (
    advisories,
    advisory_remedy,
    composition,
    licences,
    software,
)

router = APIRouter(prefix="/api/v1", tags=["software"], responses=ERROR_RESPONSES)
MAX_ADVISORY_BYTES = 64 * 1024 * 1024
MAX_VEX_BYTES = 4 * 1024 * 1024
RAW_JSON = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}
RAW_ZIP = {
    "requestBody": {
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    }
}


class ReviewIn(BaseModel):
    """An admin's decision on a bundle's licence review."""

    decision: Literal["approved", "rejected"]
    note: str = Field(default="", max_length=2000)


class WaiverIn(BaseModel):
    """An admin's waiver of a denied component for a model."""

    component: str = Field(min_length=1, max_length=1000, description="name@version or purl")
    reason: str = Field(min_length=1, max_length=2000)


class RemedyIn(BaseModel):
    """Start the remedy for an advisory's exposed devices of one model."""

    model: str | None = None
    policy: dict[str, Any] | None = None
    start: bool = False


@router.get("/bundles/{name}/components", summary="A bundle's components")
def bundle_components(
    *, name: str, params: Annotated[PageParams, Depends(page_params)], session: Db
) -> Any:
    """Name, version, purl, licence, supplier and hashes of each component (from its SBOM)."""
    return page_body(software.components_of(session, name, params))


@router.get("/bundles/{name}/licence-review", summary="A bundle's licence review")
def licence_review(*, name: str, session: Db) -> Any:
    """State (no_policy, not_required, pending, approved, rejected) and the evaluation."""
    return software.review_of(session, name)


@router.post("/bundles/{name}/licence-review", summary="Approve or reject a licence review")
def decide_review(*, name: str, body: ReviewIn, request: Request, session: Db, actor: Who) -> Any:
    """An admin's audited decision; production rollouts need ``approved``."""
    return software.decide(
        session,
        name,
        body.decision,
        body.note,
        actor=actor,
        **stamp(request),
    )


@router.post("/bundles/{name}/vex", summary="Attach VEX statements", openapi_extra=RAW_JSON)
async def add_vex(*, name: str, request: Request, session: Db, actor: Who) -> Any:
    """A CycloneDX VEX or OpenVEX document; the bundle is re-matched at once."""
    data = await read_body(request, MAX_VEX_BYTES)
    return software.add_vex(
        session,
        name,
        data,
        actor=actor,
        **stamp(request),
    )


@router.get("/releases/{version}/notices", summary="Attribution notice of a release")
def release_notices(
    *,
    version: str,
    session: Db,
    model: Annotated[str | None, Query(description="model, when several have it")] = None,
    fmt: Annotated[Literal["text", "html"], Query(alias="format")] = "text",
) -> Any:
    """Every component with its licence and supplier, as text or escaped HTML."""
    _name, text = software.notices(session, version, model, fmt)
    return HTMLResponse(text) if fmt == "html" else PlainTextResponse(text)


@router.get("/licence-policies/{model}", summary="A model's licence policy")
def get_policy(*, model: str, session: Db) -> Any:
    """Allowed, denied and needs-review licences, and the model's waivers."""
    return licences.get_policy(session, model)


@router.put("/licence-policies/{model}", summary="Set a model's licence policy")
def put_policy(
    *,
    model: str,
    body: Annotated[dict[str, Any], Body()],
    request: Request,
    session: Db,
    actor: Who,
) -> Any:
    """Replace the policy (``allowed``, ``denied``, ``needs_review``, ``default``,
    ``locked_device``); audited."""
    return licences.set_policy(
        session,
        model,
        body,
        actor=actor,
        **stamp(request),
    )


@router.post("/licence-policies/{model}/waivers", summary="Waive a denied component")
def add_waiver(*, model: str, body: WaiverIn, request: Request, session: Db, actor: Who) -> Any:
    """An admin's waiver, with a reason (audited); later publishes accept the component."""
    return licences.add_waiver(
        session,
        model,
        body.component,
        body.reason,
        actor=actor,
        **stamp(request),
    )


@router.get("/inventory", summary="Software inventory of the fleet")
def inventory(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    session: Db,
    by: Annotated[Literal["model", "hw_revision", "region", "channel"] | None, Query()] = None,
    component: Annotated[str | None, Query(description="only this component name")] = None,
) -> Any:
    """Component@version -> active devices running it (by committed release)."""
    return page_body(composition.inventory(session, by=by, component=component, params=params))


@router.get("/devices/{device_id}/components", summary="A device's components")
def device_components(*, device_id: str, session: Db) -> Any:
    """The components of the release the device has committed."""
    return composition.device_components(session, device_id)


@router.post("/advisories/import", summary="Import OSV advisories", openapi_extra=RAW_ZIP)
async def import_advisories(*, request: Request, session: Db, actor: Who) -> Any:
    """A zip of OSV JSON files (or one JSON document or list); then matched."""
    data = await read_body(request, MAX_ADVISORY_BYTES)
    kind = request.headers.get("content-type", "")
    name = "upload.zip" if "zip" in kind else "upload.json"
    return software.import_advisories(session, name, data, actor=actor, **stamp(request))


@router.get("/advisories", summary="List advisories")
def list_advisories(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    session: Db,
    severity: Annotated[str | None, Query()] = None,
    exposed: Annotated[bool, Query(description="only those matching a bundle")] = False,
) -> Any:
    """Advisories, most severe first."""
    return page_body(
        advisories.list_advisories(session, severity=severity, exposed=exposed, params=params)
    )


@router.get("/advisories/events", summary="Exposure events")
def exposure_events(*, params: Annotated[PageParams, Depends(page_params)], session: Db) -> Any:
    """Critical advisories that newly reached devices, newest first."""
    return page_body(advisories.list_events(session, params))


@router.get("/advisories/{advisory_id}", summary="One advisory and its exposure")
def show_advisory(*, advisory_id: str, session: Db) -> Any:
    """Affected bundles (with VEX status), exposed devices, earliest fixing release."""
    return advisories.advisory_detail(session, advisory_id)


@router.get("/advisories/{advisory_id}/devices", summary="Devices exposed to an advisory")
def advisory_devices(
    *, advisory_id: str, params: Annotated[PageParams, Depends(page_params)], session: Db
) -> Any:
    """Active devices whose committed release is affected and not suppressed by VEX."""
    return page_body(advisories.exposed_devices(session, advisory_id, params))


@router.post("/advisories/{advisory_id}/remedy", summary="Start the remedy")
def remedy(*, advisory_id: str, body: RemedyIn, request: Request, session: Db, actor: Who) -> Any:
    """A staged rollout of the earliest fixing release to exactly the exposed devices
    (a draft, or started with ``start``), or a draft recall when no fix exists."""
    return advisory_remedy.start_remedy(
        session,
        advisory_id,
        model=body.model,
        policy=body.policy,
        start=body.start,
        actor=actor,
        **stamp(request),
    )
