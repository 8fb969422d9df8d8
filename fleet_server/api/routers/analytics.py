"""``/api/v1/analytics``: reliability analytics computed from the fleet's own data."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from fleet_server.api.deps import Db, context
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas_analytics import (
    ClaimRates,
    EarlyWarning,
    GrowthReport,
    WeibullReport,
)
from fleet_server.services import reliability

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"], responses=ERROR_RESPONSES)

By = Annotated[str, Query(description=f"one of {', '.join(reliability.GROUPABLE)}")]


def _today(request: Request) -> date:
    return datetime.fromtimestamp(context(request).clock(), UTC).date()


@router.get("/weibull", response_model=WeibullReport, summary="Weibull life fit of a failure mode")
def weibull(
    *, request: Request, failure_mode: str, model: str | None = None, session: Db
) -> dict[str, Any]:
    """Days from activation to the first claim of ``failure_mode``, devices without one
    right-censored; MLE with likelihood-ratio intervals and the B10 life."""
    return reliability.weibull(session, _today(request), failure_mode, model)


@router.get(
    "/claims",
    response_model=EarlyWarning,
    summary="Claims early warning per batch or software version",
)
def claims(
    *,
    request: Request,
    by: By = "batch",
    failure_mode: str | None = None,
    model: str | None = None,
    session: Db,
) -> dict[str, Any]:
    """Groups whose claim rate exceeds the fleet's age-matched expectation (exact test
    with false-discovery control, monthly CUSUM)."""
    return reliability.claims_early_warning(session, _today(request), by, failure_mode, model)


@router.get("/rates", response_model=ClaimRates, summary="Claim rates per group")
def rates(
    *,
    request: Request,
    by: By = "batch",
    failure_mode: str | None = None,
    model: str | None = None,
    per: Annotated[float, Query(gt=0, description="rates per this many unit-months")] = 1000.0,
    session: Db,
) -> dict[str, Any]:
    """Claims per unit-months in service with exact Poisson intervals and a homogeneity
    test."""
    return reliability.claim_rates(session, _today(request), by, failure_mode, model, per)


@router.get("/growth", response_model=GrowthReport, summary="Reliability growth (Crow-AMSAA)")
def growth(
    *,
    request: Request,
    failure_mode: str | None = None,
    model: str | None = None,
    session: Db,
) -> dict[str, Any]:
    """Claims against cumulative fleet operating time; beta < 1 = reliability growth."""
    return reliability.growth(session, _today(request), failure_mode, model)
