"""``/api/v1/rmas`` and ``/api/v1/parts``: returns, part genealogy and reuse."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    context,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas_warranty import (
    PartOut,
    PartPage,
    PartsReliability,
    RmaOut,
    RmaPage,
)
from fleet_server.services import rma as svc

router = APIRouter(prefix="/api/v1", tags=["rma"], responses=ERROR_RESPONSES)


class RmaIn(BaseModel):
    """A new RMA: from a claim, for a device and/or a part."""

    claim_id: int | None = Field(default=None, ge=1, le=2**63 - 1)
    device_id: str | None = Field(default=None, max_length=64)
    part_serial: str | None = Field(default=None, max_length=128)
    note: str = Field(default="", max_length=2000)


class TransitionIn(BaseModel):
    """The RMA's next state."""

    state: str = Field(description="approved, rejected, returned, inspected, refurbished, scrapped")
    note: str = Field(default="", max_length=2000)


class PartIn(BaseModel):
    """A part entering stock."""

    serial: str = Field(min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=64)
    condition: str = Field(default="new", pattern="^(new|refurbished)$")


class InstallIn(BaseModel):
    """Where a part from stock goes."""

    device_id: str = Field(min_length=1, max_length=64)


@router.get("/rmas", response_model=RmaPage, summary="List RMAs")
def list_rmas(
    *, params: Annotated[PageParams, Depends(page_params)], state: str | None = None, session: Db
) -> dict[str, Any]:
    """RMAs, newest first."""
    return page_body(svc.list_rmas(session, params, state))


@router.post("/rmas", status_code=201, response_model=RmaOut, summary="Open an RMA")
def create_rma(*, body: RmaIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """State ``claimed``; links the claim, the device and the part."""
    return svc.create_rma(
        session,
        actor,
        **stamp(request),
        claim_id=body.claim_id,
        device_id=body.device_id,
        part_serial=body.part_serial,
        note=body.note,
    )


@router.get("/rmas/{rma_id}", response_model=RmaOut, summary="One RMA")
def get_rma(*, rma_id: int, session: Db) -> dict[str, Any]:
    """The RMA with its history and the moves allowed next."""
    return svc.show_rma(session, rma_id)


@router.post("/rmas/{rma_id}/transition", response_model=RmaOut, summary="Move an RMA")
def transition_rma(
    *, rma_id: int, body: TransitionIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """claimed -> approved -> returned -> inspected -> refurbished | scrapped; an illegal
    move is a 409 listing the allowed ones."""
    return svc.transition_rma(
        session,
        actor,
        rma_id,
        body.state,
        **stamp(request),
        note=body.note,
    )


@router.get("/parts", response_model=PartPage, summary="List parts")
def list_parts(
    *,
    request: Request,
    params: Annotated[PageParams, Depends(page_params)],
    kind: str | None = None,
    stock_state: str | None = None,
    session: Db,
) -> dict[str, Any]:
    """Parts with their genealogy."""
    return page_body(svc.list_parts(session, params, context(request).clock(), kind, stock_state))


@router.post("/parts", status_code=201, response_model=PartOut, summary="Register a part in stock")
def create_part(*, body: PartIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """A serialised part, new or refurbished, in stock."""
    return svc.create_part(
        session,
        actor,
        serial=body.serial,
        kind=body.kind,
        condition=body.condition,
        **stamp(request),
    )


@router.get("/parts/{serial}", response_model=PartOut, summary="One part and its genealogy")
def get_part(*, serial: str, request: Request, session: Db) -> dict[str, Any]:
    """Installations (with condition at install), repairs, hours in service."""
    return svc.show_part(session, serial, context(request).clock())


@router.post("/parts/{serial}/install", response_model=PartOut, summary="Install a part from stock")
def install_part(
    *, serial: str, body: InstallIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Start a stint in a device; a refurbished part's stint counts as reuse."""
    return svc.install_part(
        session,
        actor,
        serial,
        body.device_id,
        **stamp(request),
    )


@router.get(
    "/analytics/parts-reliability",
    response_model=PartsReliability,
    summary="Reused vs new parts",
)
def parts_reliability(*, request: Request, kind: str | None = None, session: Db) -> dict[str, Any]:
    """Failures per 1000 hours in service of parts installed new vs refurbished, with
    exact Poisson 95 % intervals and the ratio refurbished / new."""
    return svc.parts_reliability(session, context(request).clock(), kind)
