"""``/api/v1/audit``, ``/api/v1/tokens`` and ``/api/v1/whoami``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from fleet_server.api.deps import (
    PageParams,
    current_actor,
    get_session,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.api.schemas import AuditOut, Page, TokenCreated, TokenIn, TokenOut, WhoAmI
from fleet_server.domain.roles import Role
from fleet_server.services import audit, tokens
from fleet_server.services.audit import Actor, AuditFilter

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
    filt = AuditFilter(
        action=action,
        actor=actor,
        target_type=target_type,
        target_id=target_id,
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
    )
    return page_body(audit.list_entries(session, filt, params).map(audit.entry_view))


@router.get("/tokens", response_model=Page[TokenOut], summary="List API tokens")
def list_tokens(
    *,
    params: Annotated[PageParams, Depends(page_params)],
    include_revoked: bool = False,
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    """Tokens (never their secrets)."""
    result = tokens.list_tokens(session, params, include_revoked=include_revoked)
    return page_body(result.map(tokens.token_view))


@router.post("/tokens", response_model=TokenCreated, status_code=201, summary="Create a token")
def create_token(
    *,
    body: TokenIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """The secret is in this response only; store it now."""
    token, secret = tokens.issue_token(
        session,
        body.name,
        Role(body.role),
        actor=actor,
        **stamp(request),
        ttl_days=body.ttl_days,
    )
    return {**tokens.token_view(token), "secret": secret}


@router.delete("/tokens/{token_id}", response_model=TokenOut, summary="Revoke a token")
def revoke_token(
    *,
    token_id: int,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Revoke a token at once; it stays listed with ``revoked_at``. The last live admin
    token cannot be revoked."""
    token = tokens.revoke_by_id(session, token_id, actor=actor, **stamp(request))
    return tokens.token_view(token)
