"""Request body caps, enforced before the body is read (issue 13, finding 3).

FastAPI reads a JSON body *before* it runs the dependencies, so without this layer an
anonymous client could make the server buffer any number of bytes before the token check
refused it. :class:`BodyLimit` is a pure ASGI middleware, outermost but for the headers:

1. it resolves the route template from the raw scope;
2. a route that needs a token and has no ``Authorization: Bearer ...`` header is answered
   401 before a byte is read (a syntax check only: ``deps.authorize`` still verifies);
3. a ``Content-Length`` above the route's cap is answered 413 at once;
4. otherwise it counts the bytes the application receives (which covers chunked bodies)
   and answers 413 the moment they pass the cap.

Routes that stream big bodies (bundle upload, CSV import) take no body parameter, so
FastAPI authorizes them before they read a byte; the diagnostics upload checks its
one-time token before it reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_server.api.errors import error_response
from fleet_server.api.route_match import route_template
from fleet_server.api.routers.devices import MAX_CSV_BYTES
from fleet_server.api.routers.tickets import MAX_IMPORT_BYTES
from fleet_server.config import Settings
from fleet_server.domain.roles import API, PUBLIC, UndeclaredRouteError, required_role

MULTIPART_SLACK = 64 * 1024
"""Room for the multipart envelope around an uploaded bundle."""


def body_cap(settings: Settings, method: str, route: str | None) -> int:
    """The largest body accepted for ``method route`` (``route`` is the template, or None
    when nothing matches): bundles, diagnostics and CSV imports have their own limits,
    every other request is capped at ``api.max_json_bytes``."""
    key = (method.upper(), route)
    if key == ("POST", f"{API}/bundles"):
        return settings.updates.max_bundle_bytes + MULTIPART_SLACK
    if key == ("POST", f"{API}/diagnostics/upload/{{token}}"):
        return settings.diagnostics.max_bytes
    if key == ("POST", f"{API}/devices/import"):
        return MAX_CSV_BYTES
    if key == ("POST", f"{API}/advisories/import"):
        return 64 * 1024 * 1024
    if key == ("POST", f"{API}/tickets/import"):
        return MAX_IMPORT_BYTES
    return settings.api.max_json_bytes


def needs_token(method: str, route: str | None) -> bool:
    """True when ``method route`` is not public (an undeclared route is closed too)."""
    if route is None:
        return False
    try:
        return required_role(method, route) is not PUBLIC
    except UndeclaredRouteError:
        return True


def has_bearer(headers: Headers) -> bool:
    """A syntactically present bearer token (``authorize`` verifies it later)."""
    scheme, _, secret = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(secret.strip())


def declared_length(headers: Headers) -> int | None:
    """The ``Content-Length`` as a number, or None when absent or malformed."""
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes its cap, to stop the application
    reading. Whatever the layers in between turn it into (through this app's middleware
    stack FastAPI answers it as a failed body read, 400), :class:`_Counted` answers 413."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {cap} bytes for this route")


class BodyLimit:
    """Pure ASGI middleware: per-route body caps and the early bearer check (see module)."""

    def __init__(self, app: ASGIApp, *, settings: Settings, routes: Sequence[BaseRoute]) -> None:
        """``routes``: the app's API routes as declared (the permission table governs
        them; the docs pages are not among them)."""
        self.app = app
        self.settings = settings
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        route = route_template(self.routes, scope)
        if needs_token(method, route) and not has_bearer(headers):
            response = error_response(
                401,
                "unauthorized",
                "missing bearer token (Authorization: Bearer efk_...)",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        cap = body_cap(self.settings, method, route)
        declared = declared_length(headers)
        if declared is not None and declared > cap:
            await _too_large(scope, receive, send, f"body is {declared} bytes; the limit is {cap}")
            return
        await _Counted(self.app, cap)(scope, receive, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    await error_response(413, "too_large", message)(scope, receive, send)


class _Counted:
    """One request whose received bytes are counted against ``cap``.

    Past the cap, ``receive`` raises :class:`BodyTooLarge`; whatever the layers in between
    make of it (FastAPI answers a failed body read with 400), the response that follows
    is replaced by the 413, unless it had already started."""

    def __init__(self, app: ASGIApp, cap: int) -> None:
        self.app = app
        self.cap = cap
        self.received = 0
        self.started = False
        self.overflow: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.cap:
                    self.overflow = f"request body exceeds the limit of {self.cap} bytes"
                    raise BodyTooLarge(self.cap)
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.overflow is not None and not self.started:
                    self.started = True
                    await _too_large(scope, receive, send, self.overflow)
                self.started = True
            if self.overflow is None:
                await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if self.started:
                raise
            await _too_large(scope, receive, send, self.overflow or "request body too large")


def limit_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's own limits: at most ``api.max_concurrency`` requests in flight (503
    beyond) and 16 KiB of incomplete request line and headers per connection."""
    return {
        "limit_concurrency": settings.api.max_concurrency,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
