"""API tokens: a random secret shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import ApiToken
from fleet_server.domain.roles import Role
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

TOKEN_PREFIX = "efk_"
MAX_TTL_DAYS = 3650
DAY_S = 86400.0


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
        "expires_at": token.expires_at,
    }


def create_token(
    session: Session,
    name: str,
    role: Role,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
    ttl_days: float | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; return the row and the secret (shown once, never stored). With
    ``ttl_days`` it stops working that many days from ``now``; without, it lives until
    revoked."""
    if ttl_days is not None and not 0 < ttl_days <= MAX_TTL_DAYS:
        raise InvalidInputError("validation_error", f"ttl_days must be in (0, {MAX_TTL_DAYS}]")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name,
        role=role.value,
        token_hash=hash_secret(secret),
        prefix=secret[:10],
        created_at=now,
        created_by=actor.label,
        expires_at=None if ttl_days is None else now + ttl_days * DAY_S,
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


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of presenting a secret: the live token, or why there is none
    (``unknown``, ``revoked`` or ``expired``)."""

    token: ApiToken | None
    refusal: str | None = None


def check_token(session: Session, secret: str, now: float) -> TokenCheck:
    """Look ``secret`` up; a live token has its last use recorded (and committed) at
    most once a minute. Expired tokens are refused from ``expires_at`` on."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return TokenCheck(None, "unknown")
    token = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))
    ).scalar_one_or_none()
    if token is None:
        return TokenCheck(None, "unknown")
    if token.revoked_at is not None:
        return TokenCheck(None, "revoked")
    if token.expires_at is not None and token.expires_at <= now:
        return TokenCheck(None, "expired")
    if token.last_used_at is None or now - token.last_used_at > 60:
        token.last_used_at = now
        session.commit()
    return TokenCheck(token)


def authenticate(session: Session, secret: str, now: float) -> ApiToken | None:
    """The live token matching ``secret``, or None (see :func:`check_token`)."""
    return check_token(session, secret, now).token


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
    ttl_days: float | None = None,
) -> tuple[ApiToken, str]:
    """Create a token and commit it; return the row and the secret (shown once)."""
    token, secret = create_token(
        session, name, role, actor=actor, now=now, request_id=request_id, ttl_days=ttl_days
    )
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
