"""API tokens: a random secret shown once; only its sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_server.db.models import ApiToken
from fleet_server.domain.roles import Role
from fleet_server.services import audit
from fleet_server.services.audit import Actor

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
    """The live token matching ``secret``, or None; records when it was last used."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.execute(
        select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))
    ).scalar_one_or_none()
    if token is None or token.revoked_at is not None:
        return None
    if token.last_used_at is None or now - token.last_used_at > 60:
        token.last_used_at = now
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
