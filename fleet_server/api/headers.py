"""Security headers on every API response, errors included (issue 13, finding 7).

A pure ASGI middleware, outermost, so the 401 and 413 answered by the body limits and the
error handlers' bodies carry the same headers as a 200:

- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer``;
- ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`` (the
  interactive docs pages load their scripts, so they get ``frame-ancestors`` only);
- ``Cache-Control: no-store`` on every request that sent ``Authorization`` and every
  ``/api/`` response, so no proxy or browser keeps fleet data;
- ``Strict-Transport-Security`` when the request came over TLS.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HSTS = "max-age=31536000"
DOCS_PATHS = ("/docs", "/redoc")
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS_CSP = "frame-ancestors 'none'"


def security_headers(path: str, *, authenticated: bool, tls: bool) -> dict[str, str]:
    """The headers added to a response for ``path`` (pure, so tests can read the policy)."""
    out = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": DOCS_CSP if path.startswith(DOCS_PATHS) else STRICT_CSP,
    }
    if authenticated or path.startswith("/api/"):
        out["Cache-Control"] = "no-store"
    if tls:
        out["Strict-Transport-Security"] = HSTS
    return out


class SecurityHeaders:
    """Adds :func:`security_headers` to every HTTP response that does not set them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(
            scope["path"],
            authenticated="authorization" in Headers(scope=scope),
            tls=scope.get("scheme") == "https",
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    if name.lower() == "cache-control" or name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
