"""Staged rollouts: ``/api/v1/rollouts`` (create, dry-run, act, status, explain)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_server.api.deps import (
    PageParams,
    context,
    current_actor,
    get_session,
    page,
    page_params,
    request_id,
)
from fleet_server.api.errors import ERROR_RESPONSES, ApiError
from fleet_server.db.models import Bundle
from fleet_server.db.rollout_models import Rollout
from fleet_server.services import bundles as catalog
from fleet_server.services import registry
from fleet_server.services import rollouts as service
from fleet_server.services.audit import Actor

router = APIRouter(tags=["rollouts"], responses=ERROR_RESPONSES)


class RolloutIn(BaseModel):
    """A rollout: which bundle, to which devices (a registry filter), under which policy."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=128)
    bundle: str = Field(min_length=1, max_length=512, description="bundle (TUF target) name")
    selector: dict[str, Any] = Field(
        default_factory=dict,
        description="registry filter: model, hw_revision, batch, region, channel, tags, "
        "software_version, presence, has_open_faults, ... (unset fields do not filter)",
    )
    policy: dict[str, Any] = Field(
        default_factory=dict, description="rollout policy; omitted fields take safe defaults"
    )


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


class RolloutOut(BaseModel):
    """A rollout and its progress."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    bundle: str | None
    version: str | None
    state: str
    channel: str
    selector: dict[str, Any]
    policy: dict[str, Any]
    waves_total: int
    current_wave: int
    halt_reason: str | None
    halt_stratum: str | None


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except service.RolloutError as exc:
        raise ApiError(
            service.ROLLOUT_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, exc.details
        ) from None
    except catalog.CatalogError as exc:
        raise ApiError(404 if exc.code == "not_found" else 400, exc.code, exc.message) from None
    except registry.RegistryError as exc:
        raise ApiError(404 if exc.code == "not_found" else 400, exc.code, exc.message) from None


@router.post("/api/v1/rollouts/dry-run", summary="Preview who lands in which wave")
def dry_run(body: RolloutIn, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """The waves (devices and their hardware revisions) and the exclusions with reasons that
    starting this rollout now would produce. Nothing is stored."""
    from fleet_server.rollouts.policy import PolicyError, parse_policy

    with _errors():
        bundle = catalog.get_bundle(session, body.bundle)
        try:
            policy = parse_policy(body.policy)
        except PolicyError as exc:
            raise service.RolloutError("invalid_policy", str(exc), {"field": exc.field}) from None
        selector = service.parse_selector(body.selector)
        plan = service.make_plan(session, bundle, selector, policy, seed="dry-run")
    return {"bundle": bundle.name, "version": bundle.version, **plan.summary()}


@router.get("/api/v1/rollouts/explain/{device_id}", summary="Why is a device (not) updating")
def explain(
    device_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    rollout: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    """For the named rollout, or every active one: selector match, exclusion and reason,
    wave, maintenance window, quarantine, and the device's execution state."""
    ctx = context(request)
    with _errors():
        device = registry.get_device(session, device_id)
        return service.explain_device(session, device, now=ctx.clock(), rollout_id=rollout)


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
    ctx = context(request)
    with _errors():
        bundle = catalog.get_bundle(session, body.bundle)
        rollout = service.create_rollout(
            session,
            name=body.name,
            bundle=bundle,
            selector=body.selector,
            policy=body.policy,
            actor=actor,
            now=ctx.clock(),
            request_id=request_id(request),
        )
        session.commit()
        return service.rollout_status(session, rollout)


@router.get("/api/v1/rollouts", summary="List rollouts")
def list_rollouts(
    session: Annotated[Session, Depends(get_session)],
    paging: Annotated[PageParams, Depends(page_params)],
    state: Annotated[str | None, Query(max_length=16)] = None,
) -> dict[str, Any]:
    """Rollouts, newest first, optionally in one state."""
    query = select(Rollout)
    if state:
        query = query.where(Rollout.state == state)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(
        query.order_by(Rollout.created_at.desc(), Rollout.id)
        .limit(paging.limit)
        .offset(paging.offset)
    ).scalars()
    items = [service.rollout_summary(r, session.get(Bundle, r.bundle_id)) for r in rows]
    return page(items, total, paging)


@router.get("/api/v1/rollouts/{rollout_id}", summary="Status per wave and stratum")
def status(rollout_id: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """The rollout with progress per wave and per stratum (pending, sent, in progress,
    committed, failed by class, timed out) and exclusions by reason."""
    with _errors():
        return service.rollout_status(session, service.get_rollout(session, rollout_id))


@router.get("/api/v1/rollouts/{rollout_id}/events", summary="The rollout's history")
def events(rollout_id: str, session: Annotated[Session, Depends(get_session)]) -> dict[str, Any]:
    """Every state change and engine decision, oldest first."""
    with _errors():
        rollout = service.get_rollout(session, rollout_id)
        items = service.rollout_events(session, rollout)
    return {"items": items, "next_cursor": None, "total": len(items)}


@router.post("/api/v1/rollouts/{rollout_id}/start", summary="Start a draft rollout")
def start(
    rollout_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
    body: StartIn | None = None,
) -> dict[str, Any]:
    """Plan the waves and start. Production rollouts need a completed pre-production
    rollout of the bundle, unless an admin gives ``force_reason``."""
    ctx = context(request)
    with _errors():
        rollout = service.get_rollout(session, rollout_id)
        service.start_rollout(
            session,
            rollout,
            actor=actor,
            now=ctx.clock(),
            force_reason=body.force_reason if body else None,
            request_id=request_id(request),
        )
        session.commit()
        return service.rollout_status(session, rollout)


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
        ctx = context(request)
        with _errors():
            rollout = service.get_rollout(session, rollout_id)
            service.operator_action(
                session,
                rollout,
                action,
                actor=actor,
                now=ctx.clock(),
                reason=body.reason if body else "",
                to_version=body.to_version if body else None,
                request_id=request_id(request),
            )
            session.commit()
            return service.rollout_status(session, rollout)

    router.add_api_route(
        f"/api/v1/rollouts/{{rollout_id}}/{action}",
        handler,
        methods=["POST"],
        summary=summary,
        description=description,
        name=f"rollout_{action}",
        operation_id=f"rollout_{action}",
    )


for _action, (_summary, _description) in ACTIONS.items():
    _action_route(_action, _summary, _description)
