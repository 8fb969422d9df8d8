"""Console sign-in: throttled password checks and database sessions behind a cookie.

A session's secret is 256 random bits held only in the browser's cookie; the table keeps
its sha256 and a CSRF token the pages embed in every form and htmx request. Sessions end
after ``IDLE_S`` without a request or ``MAX_AGE_S`` in all, on logout, and for every
browser of a user at once on "log out everywhere", a password change or a role change.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleet_server.db.console_models import ConsoleSession, ConsoleUser, LoginAttempt
from fleet_server.domain.login_throttle import ThrottlePolicy, ThrottleRefusal, refusal
from fleet_server.services import audit, users
from fleet_server.services.audit import Actor

IDLE_S = 8 * 3600.0
MAX_AGE_S = 7 * 86400.0
TOUCH_S = 60.0
"""``last_seen_at`` is written at most this often per session."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    """A live session: its user and CSRF token."""

    user: ConsoleUser
    csrf_token: str
    session_id: int

    @property
    def actor(self) -> Actor:
        """Who the audit log names for this browser's actions."""
        return users.actor_of(self.user)


@dataclass(frozen=True)
class LoginResult:
    """A new session's cookie secret, or why sign-in was refused (``throttled`` carries
    the throttle's message; ``invalid`` is the same for an unknown user, a wrong password
    and a disabled account)."""

    secret: str | None = None
    signed_in: SignedIn | None = None
    refusal: str | None = None
    throttle: ThrottleRefusal | None = None


def _failures(
    session: Session, *, username: str | None, address: str | None, since: float
) -> list[float]:
    query = select(LoginAttempt.at).where(LoginAttempt.at >= since, LoginAttempt.ok.is_(False))
    if username is not None:
        last_ok = session.execute(
            select(LoginAttempt.at)
            .where(LoginAttempt.username == username, LoginAttempt.ok.is_(True))
            .order_by(LoginAttempt.at.desc())
            .limit(1)
        ).scalar_one_or_none()
        query = query.where(LoginAttempt.username == username)
        if last_ok is not None:
            query = query.where(LoginAttempt.at > last_ok)
    if address is not None:
        query = query.where(LoginAttempt.address == address)
    return list(session.execute(query).scalars())


def login(
    session: Session,
    username: str,
    password: str,
    *,
    address: str,
    now: float,
    policy: ThrottlePolicy = ThrottlePolicy(),  # noqa: B008 - frozen, immutable default
) -> LoginResult:
    """Check a sign-in (committed: the attempt, and on success a new session and an audit
    entry). A throttled attempt is refused before the password is checked."""
    username = username.strip()[:64]
    address = address[:64]
    since = now - policy.window_s
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < now - 2 * policy.window_s))
    session.execute(  # sessions that ended while nobody used them
        delete(ConsoleSession).where(
            (ConsoleSession.expires_at <= now) | (ConsoleSession.last_seen_at < now - IDLE_S)
        )
    )
    throttled = refusal(
        _failures(session, username=username, address=None, since=since),
        _failures(session, username=None, address=address, since=since),
        now,
        policy,
    )
    if throttled is not None:
        session.commit()
        return LoginResult(refusal="throttled", throttle=throttled)
    user = users.find_user(session, username)
    ok = users.verify_password(user, password) and user is not None and user.disabled_at is None
    session.add(LoginAttempt(at=now, username=username, address=address, ok=ok))
    if not ok or user is None:
        session.commit()
        return LoginResult(refusal="invalid")
    if users.needs_rehash(user):
        user.password_hash = users.hasher().hash(password)
    user.last_login_at = now
    secret = secrets.token_urlsafe(32)
    row = ConsoleSession(
        secret_hash=_digest(secret),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + MAX_AGE_S,
        address=address,
    )
    session.add(row)
    session.flush()
    audit.record(
        session, users.actor_of(user), "user.login", "user", user.username, now=now,
        after={"address": address},
    )  # fmt: skip
    session.commit()
    return LoginResult(secret=secret, signed_in=SignedIn(user, row.csrf_token, row.id))


def check(session: Session, secret: str | None, now: float) -> SignedIn | None:
    """The live session for a cookie secret, or None (unknown, expired, idle too long, or
    its user disabled). Expired sessions found here are deleted."""
    if not secret or len(secret) > 200:
        return None
    row = session.execute(
        select(ConsoleSession).where(ConsoleSession.secret_hash == _digest(secret))
    ).scalar_one_or_none()
    if row is None:
        return None
    user = session.get(ConsoleUser, row.user_id)
    if now >= row.expires_at or now - row.last_seen_at > IDLE_S or user is None:
        session.delete(row)
        session.commit()
        return None
    if user.disabled_at is not None:
        return None
    if now - row.last_seen_at > TOUCH_S:
        row.last_seen_at = now
        session.commit()
    return SignedIn(user, row.csrf_token, row.id)


def logout(session: Session, signed_in: SignedIn, *, now: float, everywhere: bool = False) -> int:
    """End this browser's session, or every session of its user (committed, audited);
    how many sessions ended."""
    user = session.get(ConsoleUser, signed_in.user.id)
    if user is None:
        return 0
    if everywhere:
        ended = users.end_sessions(session, user)
    else:
        result = session.execute(
            delete(ConsoleSession).where(ConsoleSession.id == signed_in.session_id)
        )
        ended = int(result.rowcount or 0)  # type: ignore[attr-defined]
    action = "user.logout_everywhere" if everywhere else "user.logout"
    audit.record(
        session, signed_in.actor, action, "user", user.username, now=now,
        after={"sessions_ended": ended},
    )  # fmt: skip
    session.commit()
    return ended
