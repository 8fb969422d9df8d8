"""The console's ASGI app, mounted by the API app at ``/console``.

A separate app (not routes of the API) because it authenticates differently: a session
cookie with CSRF tokens instead of a bearer token, and it answers refusals with pages
instead of JSON. It shares the API's context (database, clock, publisher, settings), and
the one error family: a service's refusal becomes a page with its message and status.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from fleet_server.api.deps import AppContext
from fleet_server.console import (
    pages_admin,
    pages_auth,
    pages_catalog,
    pages_devices,
    pages_overview,
    pages_rollouts,
    pages_software,
    pages_support,
)
from fleet_server.console.auth import LoginRequiredError
from fleet_server.console.web import HERE, PREFIX, render
from fleet_server.errors import FleetError


def _error_page(request: Request, status: int, code: str, message: str) -> Response:
    if request.headers.get("hx-request"):
        return render(request, "_error.html", status, code=code, message=message)
    return render(request, "error.html", status, code=code, message=message)


def create_console(ctx: AppContext) -> FastAPI:
    """The console app on the API's context (mount it at ``/console``)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.exception_handler(LoginRequiredError)
    async def _login(request: Request, _exc: LoginRequiredError) -> Response:
        path = request.url.path
        path = path if path.startswith(PREFIX) else PREFIX + path
        target = f"{PREFIX}/login?next={quote(path, safe='/')}"
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(FleetError)
    async def _refused(request: Request, exc: FleetError) -> Response:
        return _error_page(request, exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return _error_page(request, 422, "validation_error", f"{where}: {first.get('msg', '')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        return _error_page(request, exc.status_code, "http_error", str(exc.detail))

    for module in (
        pages_auth,
        pages_overview,
        pages_devices,
        pages_rollouts,
        pages_catalog,
        pages_support,
        pages_software,
        pages_admin,
    ):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
