"""Console users: local accounts with an API role and an argon2id password hash.

People sign in to the console as users; API tokens stay for scripts and devices. Every
change is audited; passwords are never stored, logged or shown, and the last enabled admin
can be neither disabled nor demoted (the fleet never locks its admins out).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fleet_server.db.console_models import ConsoleSession, ConsoleUser
from fleet_server.domain.roles import Role
from fleet_server.errors import ConflictError, InvalidInputError, NotFoundError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.paging import Page, PageParams, fetch_page

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024


class _Hashing:
    """The password hasher in use: argon2id with the library's recommended parameters
    (RFC 9106 low-memory profile). Tests swap in smaller costs with :func:`use_hasher`."""

    hasher = PasswordHasher()
    dummy: str | None = None


def hasher() -> PasswordHasher:
    """The argon2id hasher new hashes are made with."""
    return _Hashing.hasher


def use_hasher(new: PasswordHasher) -> None:
    """Hash with ``new`` from now on (existing hashes verify with their own parameters
    and are rehashed at the next sign-in)."""
    _Hashing.hasher = new
    _Hashing.dummy = None


def _dummy_hash() -> str:
    """A hash verified against when the username is unknown, so both answers take as
    long (made on first use: hashing costs time no import should pay)."""
    if _Hashing.dummy is None:
        _Hashing.dummy = _Hashing.hasher.hash(secrets.token_urlsafe(16))
    return _Hashing.dummy


def hash_password(password: str) -> str:
    """The argon2id encoded hash of ``password`` after checking its length."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInputError(
            "weak_password",
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters",
        )
    return hasher().hash(password)


def verify_password(user: ConsoleUser | None, password: str) -> bool:
    """True when ``password`` matches ``user``'s hash (constant work when ``user`` is None)."""
    try:
        hasher().verify(user.password_hash if user else _dummy_hash(), password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return False
    return user is not None


def needs_rehash(user: ConsoleUser) -> bool:
    """True when the stored hash uses other parameters than :func:`hasher`'s."""
    return hasher().check_needs_rehash(user.password_hash)


def new_password() -> str:
    """A random password for a new account (shown once)."""
    return secrets.token_urlsafe(18)


def user_view(user: ConsoleUser) -> dict[str, Any]:
    """A user as admins see it (never the hash)."""
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "created_at": user.created_at,
        "created_by": user.created_by,
        "password_changed_at": user.password_changed_at,
        "last_login_at": user.last_login_at,
        "disabled_at": user.disabled_at,
    }


def actor_of(user: ConsoleUser) -> Actor:
    """The audit actor for an action taken by ``user`` in the console."""
    return Actor(user.username, user.role)


def find_user(session: Session, username: str) -> ConsoleUser | None:
    """The user named ``username`` (exact), or None."""
    return session.execute(
        select(ConsoleUser).where(ConsoleUser.username == username)
    ).scalar_one_or_none()


def get_user(session: Session, username: str) -> ConsoleUser:
    """The user named ``username``, or ``not_found``."""
    user = find_user(session, username)
    if user is None:
        raise NotFoundError("not_found", f"no user {username!r}")
    return user


def list_users(session: Session, params: PageParams) -> Page[dict[str, Any]]:
    """One page of users by name."""
    query = select(ConsoleUser).order_by(ConsoleUser.username)
    return fetch_page(session, query, params, scalars=True).map(user_view)


def _enabled_admins(session: Session) -> int:
    query = select(func.count()).where(
        ConsoleUser.role == Role.ADMIN.value, ConsoleUser.disabled_at.is_(None)
    )
    return int(session.execute(query).scalar_one())


def create_user(
    session: Session,
    username: str,
    role: Role,
    *,
    actor: Actor,
    now: float,
    password: str | None = None,
    request_id: str | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Create a user (committed). Without ``password`` a random one is made and returned
    (shown once); with one, None is returned in its place."""
    if not USERNAME.match(username):
        raise InvalidInputError(
            "validation_error",
            "username: 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        )
    if find_user(session, username) is not None:
        raise ConflictError("conflict", f"user {username!r} already exists")
    made = password is None
    secret = new_password() if password is None else password
    user = ConsoleUser(
        username=username,
        role=role.value,
        password_hash=hash_password(secret),
        created_at=now,
        created_by=actor.label,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    view = user_view(user)
    audit.record(
        session, actor, "user.create", "user", username, now=now, after=view, request_id=request_id
    )
    session.commit()
    return view, secret if made else None


def end_sessions(session: Session, user: ConsoleUser) -> int:
    """Delete every session of ``user`` (in the caller's transaction); how many."""
    result = session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def update_user(
    session: Session,
    username: str,
    *,
    actor: Actor,
    now: float,
    role: Role | None = None,
    disabled: bool | None = None,
    password: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Change a user's role, enabled state or password (committed). Disabling, demoting
    or a new password ends the user's sessions; the last enabled admin stays an admin."""
    user = get_user(session, username)
    before = user_view(user)
    losing_admin = user.role == Role.ADMIN.value and user.disabled_at is None
    losing_admin = losing_admin and (bool(disabled) or (role is not None and role != Role.ADMIN))
    if losing_admin and _enabled_admins(session) <= 1:
        raise ConflictError("conflict", "refusing to disable or demote the last enabled admin")
    end = False
    if role is not None and role.value != user.role:
        user.role = role.value
        end = True
    if disabled is not None and disabled != (user.disabled_at is not None):
        user.disabled_at = now if disabled else None
        end = end or disabled
    if password is not None:
        user.password_hash = hash_password(password)
        user.password_changed_at = now
        end = True
    if end:
        end_sessions(session, user)
    after = user_view(user)
    audit.record(
        session,
        actor,
        "user.update",
        "user",
        username,
        now=now,
        before=before,
        after=after,
        request_id=request_id,
    )
    session.commit()
    return after


def logout_everywhere(
    session: Session, username: str, *, actor: Actor, now: float, request_id: str | None = None
) -> int:
    """End every session of ``username`` (committed, audited); how many were ended."""
    user = get_user(session, username)
    ended = end_sessions(session, user)
    audit.record(
        session,
        actor,
        "user.logout_everywhere",
        "user",
        username,
        now=now,
        after={"sessions_ended": ended},
        request_id=request_id,
    )
    session.commit()
    return ended
