"""Sign in, sign out, and sign out everywhere."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import COOKIE, LOGIN_COOKIE, Form, Signed, set_cookie, tokens_match
from fleet_server.console.web import PREFIX, render
from fleet_server.services import console_sessions

router = APIRouter()


def _next(value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//"):
        return value
    return f"{PREFIX}/"


def _login_page(request: Request, message: str = "", status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    page = render(
        request,
        "login.html",
        status_code,
        login_csrf=token,
        message=message,
        next=_next(request.query_params.get("next")),
    )
    set_cookie(request, page, LOGIN_COOKIE, token, 3600)
    return page


@router.get("/login")
def login_form(request: Request) -> Response:
    """The sign-in form."""
    return _login_page(request)


@router.post("/login")
async def login(request: Request, session: Db) -> Response:
    """Check the password (throttled per account and per address); on success set the
    session cookie and go where the user was headed."""
    form = await request.form()
    given = form.get("csrf_token")
    if not tokens_match(
        given if isinstance(given, str) else None, request.cookies.get(LOGIN_COOKIE, "")
    ):
        return _login_page(request, "The form expired; please sign in again.", 403)
    address = request.client.host if request.client else "unknown"
    result = console_sessions.login(
        session,
        str(form.get("username", "")),
        str(form.get("password", "")),
        address=address,
        now=context(request).clock(),
    )
    if result.throttle is not None:
        return _login_page(request, result.throttle.message, 429)
    if result.secret is None:
        return _login_page(request, "Wrong username or password.", 401)
    target = _next(str(form.get("next", "")))
    response = RedirectResponse(target, status_code=303)
    set_cookie(request, response, COOKIE, result.secret, int(console_sessions.MAX_AGE_S))
    response.delete_cookie(LOGIN_COOKIE, path="/console", httponly=True, samesite="strict")
    return response


def _signed_out() -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(request: Request, session: Db, who: Signed, _form: Form) -> Response:
    """End this browser's session."""
    console_sessions.logout(session, who, now=context(request).clock())
    return _signed_out()


@router.post("/logout-everywhere")
def logout_everywhere(request: Request, session: Db, who: Signed, _form: Form) -> Response:
    """End every session of this user, on every browser."""
    console_sessions.logout(session, who, now=context(request).clock(), everywhere=True)
    return _signed_out()
