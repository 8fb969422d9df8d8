"""``/api/v1/warranty/rules`` and ``/api/v1/claims``: coverage and warranty claims."""

from __future__ import annotations

from datetime import date
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
from fleet_server.api.schemas_warranty import ClaimDetail, ClaimOut, ClaimPage, RuleList, RuleOut
from fleet_server.services import warranty as svc

router = APIRouter(prefix="/api/v1", tags=["warranty"], responses=ERROR_RESPONSES)


class RuleIn(BaseModel):
    """Coverage of a model in a region (``*`` = any region without its own rule)."""

    model: str = Field(min_length=1, max_length=128)
    region: str = Field(default="*", min_length=1, max_length=64)
    months: int = Field(ge=1, le=240, description="months from activation")
    covers: list[str] = Field(
        min_length=1, max_length=200, description='failure modes / part kinds, or ["*"]'
    )


class ClaimIn(BaseModel):
    """A warranty claim as filed."""

    device: str = Field(min_length=1, max_length=128, description="device id or serial")
    failure_mode: str = Field(min_length=1, max_length=64, description="e.g. an alarm code")
    failure_date: date
    part_kind: str | None = Field(default=None, max_length=64)
    part_serial: str | None = Field(default=None, max_length=128)
    description: str = Field(default="", max_length=10000)


class DecisionIn(BaseModel):
    """A reviewer's decision."""

    decision: str = Field(pattern="^(approved|rejected)$")
    note: str = Field(min_length=1, max_length=2000, description="why (kept with the claim)")


@router.get("/warranty/rules", response_model=RuleList, summary="Coverage rules")
def list_rules(*, session: Db) -> dict[str, Any]:
    """Every coverage rule."""
    return {"items": [svc.rule_view(r) for r in svc.rules(session)]}


@router.put("/warranty/rules", response_model=RuleOut, summary="Create or replace a coverage rule")
def put_rule(*, body: RuleIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Coverage for ``model`` in ``region``: months from activation and what is covered."""
    return svc.set_rule(
        session,
        actor,
        model=body.model,
        region=body.region,
        months=body.months,
        covers=body.covers,
        **stamp(request),
    )


@router.get("/claims", response_model=ClaimPage, summary="List claims")
def list_claims(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    state: str | None = None,
    failure_mode: str | None = None,
    session: Db,
) -> dict[str, Any]:
    """Claims, newest first, with their check results."""
    return page_body(svc.list_claims(session, params, state, failure_mode))


@router.post("/claims", status_code=201, response_model=ClaimOut, summary="File a warranty claim")
def create_claim(*, body: ClaimIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Stored with automatic check results (coverage, device active, alarm evidence);
    failing checks are shown to the reviewer, never a silent rejection."""
    return svc.create_claim(
        session,
        actor,
        device_ref=body.device,
        failure_mode=body.failure_mode,
        failure_date=body.failure_date,
        **stamp(request),
        part_kind=body.part_kind,
        part_serial=body.part_serial,
        description=body.description,
        alarm_map=context(request).settings.warranty.failure_mode_alarms,
    )


@router.get("/claims/{claim_id}", response_model=ClaimDetail, summary="One claim with its evidence")
def get_claim(*, claim_id: int, session: Db) -> dict[str, Any]:
    """The claim, its checks, links to the device's alarms and a telemetry summary
    around the failure."""
    return svc.claim_detail(session, claim_id)


@router.post(
    "/claims/{claim_id}/decision", response_model=ClaimOut, summary="Approve or reject a claim"
)
def decide_claim(
    *, claim_id: int, body: DecisionIn, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """The reviewer's call, with a note; the automatic checks are kept alongside."""
    return svc.decide_claim(
        session,
        actor,
        claim_id,
        body.decision,
        note=body.note,
        **stamp(request),
    )


@router.post(
    "/claims/{claim_id}/recheck", response_model=ClaimOut, summary="Run a claim's checks again"
)
def recheck_claim(*, claim_id: int, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Evidence uploaded late by a device that was offline is picked up; the decision, if
    any, stays."""
    return svc.recheck_claim(
        session,
        actor,
        claim_id,
        **stamp(request),
        alarm_map=context(request).settings.warranty.failure_mode_alarms,
    )
