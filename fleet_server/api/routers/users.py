"""``/api/v1/users``: console user accounts (admins only).

People sign in to the web console as users; API tokens remain for scripts and devices.
The same service functions back ``fleetctl users`` and the console's users page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from fleet_server.api.deps import (
    Db,
    PageParams,
    Who,
    page_body,
    page_params,
    stamp,
)
from fleet_server.api.errors import ERROR_RESPONSES
from fleet_server.domain.roles import Role
from fleet_server.services import users

router = APIRouter(prefix="/api/v1/users", tags=["users"], responses=ERROR_RESPONSES)


class UserOut(BaseModel):
    """A console user (never the password or its hash)."""

    id: int
    username: str
    role: Role
    created_at: float
    created_by: str
    password_changed_at: float
    last_login_at: float | None
    disabled_at: float | None


class UserPage(BaseModel):
    """One page of users."""

    items: list[UserOut]
    next_cursor: str | None
    total: int


class UserIn(BaseModel):
    """A new user; without ``password`` a random one is made and returned once."""

    username: str = Field(min_length=1, max_length=64)
    role: Role
    password: str | None = Field(default=None, min_length=1, max_length=1024)


class UserCreated(UserOut):
    """The new user and, when the server made it, the password (shown once)."""

    password: str | None


class UserPatch(BaseModel):
    """Changes: role, enabled state, password. Any of them ends the user's sessions."""

    role: Role | None = None
    disabled: bool | None = None
    password: str | None = Field(default=None, min_length=1, max_length=1024)


class SessionsEnded(BaseModel):
    """How many console sessions were ended."""

    username: str
    sessions_ended: int


@router.get("", response_model=UserPage, summary="List console users")
def list_users(params: Annotated[PageParams, Depends(page_params)], session: Db) -> dict[str, Any]:
    """Users by name."""
    return page_body(users.list_users(session, params))


@router.post("", response_model=UserCreated, status_code=201, summary="Create a console user")
def create_user(body: UserIn, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """A made-up password is in this response only; hand it over now."""
    view, password = users.create_user(
        session,
        body.username,
        body.role,
        actor=actor,
        **stamp(request),
        password=body.password,
    )
    return {**view, "password": password}


@router.patch("/{username}", response_model=UserOut, summary="Change a console user")
def update_user(
    username: str, body: UserPatch, request: Request, session: Db, actor: Who
) -> dict[str, Any]:
    """Role, enabled state or password; the last enabled admin stays an admin."""
    return users.update_user(
        session,
        username,
        actor=actor,
        **stamp(request),
        role=body.role,
        disabled=body.disabled,
        password=body.password,
    )


@router.post(
    "/{username}/logout",
    response_model=SessionsEnded,
    summary="End every console session of a user",
)
def logout_everywhere(username: str, request: Request, session: Db, actor: Who) -> dict[str, Any]:
    """Every browser of this user must sign in again."""
    ended = users.logout_everywhere(session, username, actor=actor, **stamp(request))
    return {"username": username, "sessions_ended": ended}
