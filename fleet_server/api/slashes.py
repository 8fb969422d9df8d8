"""The trailing-slash redirect, without trusting the Host header (issue 13, finding 7).

Starlette's own ``redirect_slashes`` builds an absolute ``Location`` from the request's
``Host`` header, so ``GET /api/v1/devices/`` with ``Host: evil.example`` redirected to
``http://evil.example/api/v1/devices`` (an open redirect, and a cache-poisoning one).
The app turns that off; this middleware answers GET and HEAD on ``.../`` with a 307 to
the *relative* path without the slash (query kept) when a route serves it. A path that
starts with ``//`` is never redirected (a browser reads ``//host`` as another site).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from fleet_server.api.route_match import path_matches


def relative_location(path: str, query: bytes) -> str:
    """``path`` without its trailing slash, plus the query string, as a relative URL."""
    location = path.rstrip("/")
    return f"{location}?{query.decode('latin-1')}" if query else location


class TrailingSlash:
    """307 from ``/x/`` to ``/x`` (relative) when a route serves ``/x``."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            scope["type"] == "http"
            and scope["method"] in ("GET", "HEAD")
            and len(path) > 1
            and path.endswith("/")
            and not path.startswith("//")
            and path_matches(self.routes, scope, path.rstrip("/"))
        ):
            location = relative_location(path, scope.get("query_string", b""))
            await Response(status_code=307, headers={"Location": location})(scope, receive, send)
            return
        await self.app(scope, receive, send)
