"""Request-scoped dependencies: database session, authentication and authorization."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from fastapi import Depends, Query, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.api.auth_throttle import FailureWindow
from fleet_server.api.errors import ApiError
from fleet_server.api.route_match import template
from fleet_server.config import Settings
from fleet_server.db.models import ApiToken
from fleet_server.domain.roles import Role, UndeclaredRouteError, required_role
from fleet_server.errors import InvalidInputError, TooLargeError
from fleet_server.services import tokens
from fleet_server.services.audit import Actor
from fleet_server.services.clock import Clock
from fleet_server.services.commands import Publisher
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.paging import Page, PageParams


@dataclass
class AppContext:
    """Everything routes need, built once by ``create_app``."""

    settings: Settings
    sessions: sessionmaker[Session]
    clock: Clock
    publisher: Publisher | None
    metrics: IngestMetrics | None


def context(request: Request) -> AppContext:
    """The application's context."""
    return request.app.state.ctx  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """A database session for this request (closed afterwards; the services commit)."""
    with context(request).sessions() as session:
        yield session


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id(request: Request) -> str:
    """The caller's ``X-Request-ID`` when well-formed, else a fresh one."""
    rid = getattr(request.state, "request_id", None)
    if rid:
        return rid  # type: ignore[no-any-return]
    given = request.headers.get("x-request-id", "")
    rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    request.state.request_id = rid
    return rid


class Stamp(TypedDict):
    """When an audited operator action happens and which request did it."""

    now: float
    request_id: str


def stamp(request: Request) -> Stamp:
    """The time (the app's clock) and request id that every audited service call takes,
    spread into it as ``**stamp(request)``."""
    return {"now": context(request).clock(), "request_id": request_id(request)}


def authorize(request: Request, session: Annotated[Session, Depends(get_session)]) -> Actor | None:
    """Check the bearer token against the permission table entry of the matched route.

    Public routes get ``None``; an undeclared route is refused (closed by default).
    """
    route = request.scope.get("route")
    path = template(route.path if isinstance(route, APIRoute) else request.url.path)
    try:
        needed = required_role(request.method, path)
    except UndeclaredRouteError as exc:
        raise ApiError(403, "forbidden", str(exc)) from None
    if needed is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "unauthorized", "missing bearer token (Authorization: Bearer efk_...)")
    token = _check_throttled(request, session, secret.strip())
    role = Role(token.role)
    if not role.allows(needed):
        raise ApiError(
            403,
            "forbidden",
            f"role {role.value} may not {request.method} {path}; needs {needed.value} or above",
        )
    actor = Actor(token.name, role.value, token.id)
    request.state.actor = actor
    return actor


def _check_throttled(request: Request, session: Session, secret: str) -> ApiToken:
    """The live token for ``secret``; a source with too many recent failures gets 429
    (with ``Retry-After``) before its token is even looked up, and every failure counts."""
    now = context(request).clock()
    throttle: FailureWindow = request.app.state.auth_throttle
    source = request.client.host if request.client else "unknown"
    wait = throttle.retry_after(source, now)
    if wait is not None:
        raise ApiError(
            429,
            "too_many_auth_failures",
            f"too many failed tokens from {source}; retry in {wait} s",
            {"retry_after_s": wait},
            headers={"Retry-After": str(wait)},
        )
    check = tokens.check_token(session, secret, now)
    if check.token is not None:
        return check.token
    throttle.record_failure(source, now)
    request.app.state.auth_failures.labels(reason=check.refusal or "unknown").inc()
    if check.refusal == "expired":
        raise ApiError(401, "token_expired", "this token has expired; ask an admin for a new one")
    raise ApiError(401, "unauthorized", "unknown or revoked token")


def current_actor(actor: Annotated[Actor | None, Depends(authorize)]) -> Actor:
    """The authenticated actor (routes that are never public)."""
    if actor is None:  # pragma: no cover - public routes do not ask for an actor
        raise ApiError(401, "unauthorized", "authentication required")
    return actor


MAX_OFFSET = 10**15
"""Larger offsets overflow the databases' integers (a 500 instead of an empty page)."""


def page_params(
    limit: Annotated[int, Query(ge=1, le=1000, description="page size (max 1000)")] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    offset: Annotated[
        int | None, Query(ge=0, le=MAX_OFFSET, description="alternative to cursor")
    ] = None,
) -> PageParams:
    """Parse pagination parameters; a bad cursor is a 422 naming it."""
    start = offset or 0
    if cursor:
        if not cursor.startswith("o") or not cursor[1:].isdigit() or len(cursor) > 16:
            raise ApiError(422, "validation_error", "cursor: not a cursor returned by this API")
        start = int(cursor[1:])
    return PageParams(limit, start)


def page_body(result: Page[Any]) -> dict[str, Any]:
    """The paginated response body of a service's :class:`Page` (items already shaped)."""
    nxt = result.next_offset
    return {
        "items": result.items,
        "next_cursor": None if nxt is None else f"o{nxt}",
        "total": result.total,
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 ``too_large`` as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLargeError("too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError("too_large", f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_text_body(request: Request, limit: int, code: str, what: str) -> str:
    """The request body as UTF-8 text (a byte-order mark is dropped), within ``limit``;
    anything else is refused as ``code`` ("the WHAT is not UTF-8 text")."""
    body = await read_body(request, limit)
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(code, f"the {what} is not UTF-8 text") from None


Db = Annotated[Session, Depends(get_session)]
"""A route parameter holding the request's database session."""

Who = Annotated[Actor, Depends(current_actor)]
"""A route parameter holding the authenticated caller (audited as the actor)."""
