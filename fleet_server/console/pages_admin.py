"""The audit log (technicians and up) and people and tokens (admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from fleet_server.api.deps import Db, context
from fleet_server.console.auth import Admin, Form, Technician
from fleet_server.console.web import PREFIX, page_params, pager, query_value, render
from fleet_server.domain.roles import Role
from fleet_server.errors import InvalidInputError
from fleet_server.services import audit, tokens, users
from fleet_server.services.audit import AuditFilter

router = APIRouter()


@router.get("/audit")
def audit_log(request: Request, session: Db, _who: Technician) -> HTMLResponse:
    """Audit entries newest first, filtered by action prefix, actor and target."""
    filt = AuditFilter(
        action=query_value(request, "action"),
        actor=query_value(request, "actor"),
        target_type=query_value(request, "target_type"),
        target_id=query_value(request, "target_id"),
    )
    page = audit.list_entries(session, filt, page_params(request)).map(audit.entry_view)
    return render(request, "audit.html", page=page, pager=pager(page), filt=filt)


def _people(request: Request, session: Session, created: dict[str, Any] | None) -> HTMLResponse:
    live = tokens.list_tokens(session, page_params(request, 200), include_revoked=False)
    return render(
        request,
        "users.html",
        users=users.list_users(session, page_params(request, 200)).items,
        tokens=live.map(tokens.token_view).items,
        roles=[r.value for r in Role],
        created=created,
    )


@router.get("/users")
def people(request: Request, session: Db, _who: Admin) -> HTMLResponse:
    """Console users and API tokens."""
    return _people(request, session, None)


def _role(value: object) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise InvalidInputError(
            "validation_error", "role: viewer, technician, operator or admin"
        ) from None


@router.post("/users")
def create_user(request: Request, session: Db, who: Admin, form: Form) -> HTMLResponse:
    """Create a user with a random password, shown once on the answer page."""
    view, password = users.create_user(
        session,
        str(form.get("username", "")).strip(),
        _role(form.get("role")),
        actor=who.actor,
        now=context(request).clock(),
    )
    return _people(request, session, {"username": view["username"], "password": password})


@router.post("/users/{username}")
def change_user(username: str, request: Request, session: Db, who: Admin, form: Form) -> Response:
    """Change a role, disable or enable, or end every session of a user."""
    now = context(request).clock()
    what = str(form.get("change", ""))
    if what == "role":
        users.update_user(session, username, actor=who.actor, now=now, role=_role(form.get("role")))
    elif what in ("disable", "enable"):
        users.update_user(session, username, actor=who.actor, now=now, disabled=what == "disable")
    elif what == "logout":
        users.logout_everywhere(session, username, actor=who.actor, now=now)
    else:
        raise InvalidInputError("validation_error", "change: role, disable, enable or logout")
    return RedirectResponse(f"{PREFIX}/users", status_code=303)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: int, request: Request, session: Db, who: Admin, _form: Form) -> Response:
    """Revoke an API token (never the last admin token)."""
    tokens.revoke_by_id(session, token_id, actor=who.actor, now=context(request).clock())
    return RedirectResponse(f"{PREFIX}/users", status_code=303)
