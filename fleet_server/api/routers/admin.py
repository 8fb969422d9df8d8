"""``/api/v1/audit``, ``/api/v1/tokens`` and ``/api/v1/whoami``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
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
from fleet_server.api.schemas import AuditOut, Page, TokenCreated, TokenIn, TokenOut, WhoAmI
from fleet_server.db.models import ApiToken, AuditEntry
from fleet_server.domain.roles import Role
from fleet_server.services import tokens
from fleet_server.services.audit import Actor

router = APIRouter(prefix="/api/v1", tags=["admin"], responses=ERROR_RESPONSES)


@router.get("/whoami", response_model=WhoAmI, summary="The caller's token name and role")
def whoami(actor: Annotated[Actor, Depends(current_actor)]) -> dict[str, Any]:
    """Check a token."""
    return {"name": actor.name, "role": actor.role}


@router.get("/audit", response_model=Page[AuditOut], summary="Read the audit log")
def audit_log(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    action: str | None = None,
    actor: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Audit entries newest first; ``action`` matches a prefix (``device.``)."""
    where: list[Any] = []
    if action:
        where.append(AuditEntry.action.startswith(action, autoescape=True))
    if actor:
        where.append(AuditEntry.actor == actor)
    if target_type:
        where.append(AuditEntry.target_type == target_type)
    if target_id:
        where.append(AuditEntry.target_id == target_id)
    if since:
        where.append(AuditEntry.at >= since.timestamp())
    if until:
        where.append(AuditEntry.at < until.timestamp())
    total = session.execute(select(func.count()).select_from(AuditEntry).where(*where)).scalar_one()
    rows = session.execute(
        select(AuditEntry)
        .where(*where)
        .order_by(AuditEntry.id.desc())
        .limit(params.limit)
        .offset(params.offset)
    ).scalars()
    items = [{c.key: getattr(e, c.key) for c in AuditEntry.__table__.columns} for e in rows]
    return page(items, int(total), params)


@router.get("/tokens", response_model=Page[TokenOut], summary="List API tokens")
def list_tokens(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    include_revoked: bool = False,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Tokens (never their secrets)."""
    where = [] if include_revoked else [ApiToken.revoked_at.is_(None)]
    total = session.execute(select(func.count()).select_from(ApiToken).where(*where)).scalar_one()
    rows = session.execute(
        select(ApiToken)
        .where(*where)
        .order_by(ApiToken.id)
        .limit(params.limit)
        .offset(params.offset)
    ).scalars()
    return page([tokens.token_view(t) for t in rows], int(total), params)


@router.post("/tokens", response_model=TokenCreated, status_code=201, summary="Create a token")
def create_token(
    *,
    body: TokenIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """The secret is in this response only; store it now."""
    token, secret = tokens.create_token(
        session,
        body.name,
        Role(body.role),
        actor=actor,
        now=context(request).clock(),
        request_id=request_id(request),
    )
    session.commit()
    return {**tokens.token_view(token), "secret": secret}


@router.delete("/tokens/{token_id}", response_model=TokenOut, summary="Revoke a token")
def revoke_token(
    *,
    token_id: int,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Revoke a token at once; it stays listed with ``revoked_at``."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise ApiError(404, "not_found", f"token {token_id} does not exist")
    if token.revoked_at is not None:
        raise ApiError(409, "conflict", f"token {token_id} is already revoked")
    if token.role == Role.ADMIN.value and len(tokens.live_admins(session)) <= 1:
        raise ApiError(409, "conflict", "refusing to revoke the last admin token")
    tokens.revoke_token(
        session, token, actor=actor, now=context(request).clock(), request_id=request_id(request)
    )
    session.commit()
    return tokens.token_view(token)
