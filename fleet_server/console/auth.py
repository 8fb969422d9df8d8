"""Who is at the keyboard: the session cookie, role checks and CSRF on every change.

Every page needs a live session (else a redirect to the login page); every POST needs
the session's CSRF token in the form (``csrf_token``) or the ``X-CSRF-Token`` header
(htmx sends it from the page's ``hx-headers``), compared in constant time, and the role
the action needs. The cookie is HttpOnly, SameSite=Strict, and Secure over TLS.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request, Response
from starlette.datastructures import FormData

from fleet_server.api.deps import Db, context
from fleet_server.domain.roles import Role
from fleet_server.errors import ForbiddenError
from fleet_server.services import console_sessions
from fleet_server.services.console_sessions import SignedIn

COOKIE = "fleet_console"
LOGIN_COOKIE = "fleet_console_login"
"""Double-submit CSRF cookie of the login form (there is no session yet)."""


class LoginRequiredError(Exception):
    """No live session: the console answers with a redirect to its login page."""


def is_tls(request: Request) -> bool:
    """True when the browser reached us over HTTPS (cookies then get ``Secure``)."""
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, path /console, Secure over TLS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=is_tls(request),
    )


def signed_in(request: Request, session: Db) -> SignedIn:
    """The live session of this browser, or :class:`LoginRequiredError`."""
    found = console_sessions.check(session, request.cookies.get(COOKIE), context(request).clock())
    if found is None:
        raise LoginRequiredError
    request.state.signed_in = found
    return found


Signed = Annotated[SignedIn, Depends(signed_in)]


def at_least(role: Role) -> Callable[[SignedIn], SignedIn]:
    """A dependency refusing (403) users below ``role``."""

    def check(who: Signed) -> SignedIn:
        if not Role(who.user.role).allows(role):
            raise ForbiddenError(
                "forbidden", f"role {who.user.role} may not do this; needs {role.value} or above"
            )
        return who

    return check


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented CSRF token."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())


async def checked_form(request: Request, who: Signed) -> FormData:
    """The POSTed form once its CSRF token matches this session's (403 otherwise)."""
    form = await request.form()
    given = form.get("csrf_token") or request.headers.get("x-csrf-token")
    if not tokens_match(given if isinstance(given, str) else None, who.csrf_token):
        raise ForbiddenError("csrf_refused", "missing or wrong CSRF token; reload the page")
    return form


Form = Annotated[FormData, Depends(checked_form)]
Viewer = Annotated[SignedIn, Depends(at_least(Role.VIEWER))]
Technician = Annotated[SignedIn, Depends(at_least(Role.TECHNICIAN))]
Operator = Annotated[SignedIn, Depends(at_least(Role.OPERATOR))]
Admin = Annotated[SignedIn, Depends(at_least(Role.ADMIN))]
