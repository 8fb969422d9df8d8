"""API tokens: a random secret shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import ApiToken
from fleet_server.domain.roles import Role
from fleet_server.errors import ConflictError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

TOKEN_PREFIX = "efk_"


def hash_secret(secret: str) -> str:
    """The stored form of a token (hex sha256; the secret has 256 random bits)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def token_view(token: ApiToken) -> dict[str, Any]:
    """A token as shown to admins (never the secret or its hash)."""
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "prefix": token.prefix,
        "created_at": token.created_at,
        "created_by": token.created_by,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
    }


def create_token(
    session: Session,
    name: str,
    role: Role,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; return the row and the secret (shown once, never stored)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role.value,
        token_hash=hash_secret(secret),
        prefix=secret[:10],
        created_at=now,
        created_by=actor.label,
    )
    session.add(token)
    session.flush()
    audit.record(
        session,
        actor,
        "token.create",
        "token",
        str(token.id),
        now=now,
        after=token_view(token),
        request_id=request_id,
    )
    return token, secret


def authenticate(session: Session, secret: str, now: float) -> ApiToken | None:
    """The live token matching ``secret``, or None; records (and commits) when it was
    last used, at most once a minute."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        return None
    if token.last_used_at is None or now - token.last_used_at > 60:
        token.last_used_at = now
        session.commit()
    return token


def revoke_token(
    session: Session, token: ApiToken, *, actor: Actor, now: float, request_id: str | None = None
) -> None:
    """Revoke a token (kept for the audit trail)."""
    before = token_view(token)
    token.revoked_at = now
    audit.record(
        session,
        actor,
        "token.revoke",
        "token",
        str(token.id),
        now=now,
        before=before,
        after=token_view(token),
        request_id=request_id,
    )


def live_admins(session: Session) -> list[ApiToken]:
    """Tokens with the admin role that are not revoked."""
    return list(
        session.execute(
            select(ApiToken).where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
        ).scalars()
    )


def list_tokens(session: Session, params: PageParams, *, include_revoked: bool) -> Page[ApiToken]:
    """One page of tokens by id (live ones only unless ``include_revoked``)."""
    query = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    return fetch_page(session, query, params, scalars=True)


def issue_token(
    session: Session,
    name: str,
    role: Role,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and commit it; return the row and the secret (shown once)."""
    token, secret = create_token(session, name, role, actor=actor, now=now, request_id=request_id)
    session.commit()
    return token, secret


def revoke_by_id(
    session: Session, token_id: int, *, actor: Actor, now: float, request_id: str | None = None
) -> ApiToken:
    """Revoke token ``token_id`` and commit. Refuses (409) a token already revoked and the
    last live admin token, so the fleet never locks its admins out; 404 when unknown."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError("not_found", f"token {token_id} does not exist")
    if token.revoked_at is not None:
        raise ConflictError("conflict", f"token {token_id} is already revoked")
    if token.role == Role.ADMIN.value and len(live_admins(session)) <= 1:
        raise ConflictError("conflict", "refusing to revoke the last admin token")
    revoke_token(session, token, actor=actor, now=now, request_id=request_id)
    session.commit()
    return token
