"""Staged rollouts: ``/api/v1/rollouts`` (create, dry-run, act, status, explain)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

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
from fleet_server.api.schemas_rollouts import (
    DryRunOut,
    ExplainOut,
    RolloutEventList,
    RolloutIn,
    RolloutOut,
    RolloutPage,
)
from fleet_server.services import rollouts as service
from fleet_server.services import rollouts_explain
from fleet_server.services.audit import Actor

router = APIRouter(tags=["rollouts"], responses=ERROR_RESPONSES)


class StartIn(BaseModel):
    """Start a draft rollout; ``force_reason`` (admins only) skips the pre-production rule."""

    model_config = ConfigDict(extra="forbid")

    force_reason: str | None = Field(default=None, max_length=500)


class ActionIn(BaseModel):
    """Why an operator acts (kept in the audit log and the rollout's history)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=500)
    to_version: str | None = Field(
        default=None, max_length=64, description="rollback only: the known-good version"
    )


@router.post(
    "/api/v1/rollouts/dry-run",
    response_model=DryRunOut,
    summary="Preview who lands in which wave",
)
def dry_run(body: RolloutIn, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """The waves (devices and their hardware revisions) and the exclusions with reasons that
    starting this rollout now would produce. Nothing is stored."""
    return service.dry_run(session, bundle=body.bundle, selector=body.selector, policy=body.policy)


@router.get(
    "/api/v1/rollouts/explain/{device_id}",
    response_model=ExplainOut,
    summary="Why is a device (not) updating",
)
def explain(
    device_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    rollout: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    """For the named rollout, or every active one: selector match, exclusion and reason,
    wave, maintenance window, quarantine, and the device's execution state."""
    return rollouts_explain.explain(
        session, device_id, now=context(request).clock(), rollout_id=rollout
    )


@router.post(
    "/api/v1/rollouts", status_code=201, response_model=RolloutOut, summary="Create a draft"
)
def create(
    body: RolloutIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Create a draft rollout (validated: selector, policy, blocked versions)."""
    return service.create_draft(
        session,
        name=body.name,
        bundle=body.bundle,
        selector=body.selector,
        policy=body.policy,
        actor=actor,
        **stamp(request),
    )


@router.get("/api/v1/rollouts", response_model=RolloutPage, summary="List rollouts")
def list_rollouts(
    session: Annotated[Session, Depends(get_session)],
    paging: Annotated[PageParams, Depends(page_params)],
    state: Annotated[str | None, Query(max_length=16)] = None,
) -> dict[str, Any]:
    """Rollouts, newest first, optionally in one state."""
    return page_body(service.list_rollouts(session, paging, state=state))


@router.get(
    "/api/v1/rollouts/{rollout_id}",
    response_model=RolloutOut,
    summary="Status per wave and stratum",
)
def status(rollout_id: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """The rollout with progress per wave and per stratum (pending, sent, in progress,
    committed, failed by class, timed out) and exclusions by reason."""
    return service.status_of(session, rollout_id)


@router.get(
    "/api/v1/rollouts/{rollout_id}/events",
    response_model=RolloutEventList,
    summary="The rollout's history",
)
def events(rollout_id: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """Every state change and engine decision, oldest first."""
    items = service.history_of(session, rollout_id)
    return {"items": items, "next_cursor": None, "total": len(items)}


@router.post(
    "/api/v1/rollouts/{rollout_id}/start",
    response_model=RolloutOut,
    summary="Start a draft rollout",
)
def start(
    rollout_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
    body: StartIn | None = None,
) -> dict[str, Any]:
    """Plan the waves and start. Production rollouts need a completed pre-production
    rollout of the bundle, unless an admin gives ``force_reason``."""
    return service.start(
        session,
        rollout_id,
        actor=actor,
        **stamp(request),
        force_reason=body.force_reason if body else None,
    )


ACTIONS: dict[str, tuple[str, str]] = {
    "pause": ("Pause", "Nothing new starts; devices already updating finish."),
    "resume": (
        "Resume",
        "Resume a paused or halted rollout (a halt's reason is cleared, and kept in history; "
        "failures before the resume are acknowledged).",
    ),
    "cancel": ("Cancel", "Stop for good; devices not sent their install yet are released."),
    "rollback": (
        "Roll back",
        "Send every device that runs the release back to ``to_version`` (or the policy's "
        "``on_halt.rollback_to``), a known-good signed release.",
    ),
}


def _action_route(action: str, summary: str, description: str) -> None:
    """Register ``POST /api/v1/rollouts/{rollout_id}/<action>`` (one handler per action, so
    each keeps its own path, permission entry and OpenAPI operation)."""

    def handler(
        rollout_id: str,
        request: Request,
        session: Annotated[Session, Depends(get_session)],
        actor: Annotated[Actor, Depends(current_actor)],
        body: ActionIn | None = None,
    ) -> dict[str, Any]:
        return service.act(
            session,
            rollout_id,
            action,
            actor=actor,
            **stamp(request),
            reason=body.reason if body else "",
            to_version=body.to_version if body else None,
        )

    router.add_api_route(
        f"/api/v1/rollouts/{{rollout_id}}/{action}",
        handler,
        methods=["POST"],
        summary=summary,
        description=description,
        name=f"rollout_{action}",
        response_model=RolloutOut,
        operation_id=f"rollout_{action}",
    )


for _action, (_summary, _description) in ACTIONS.items():
    _action_route(_action, _summary, _description)
