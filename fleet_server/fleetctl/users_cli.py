"""``fleetctl users ...``: console user accounts (admins only)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.common import JsonOpt, LimitOpt

users_app = common.new_app(
    help="Console users: people who sign in to the web console (admin only).",
    no_args_is_help=True,
)
COLUMNS = ["username", "role", "created_at", "last_login_at", "disabled_at"]
RoleOpt = Annotated[str, typer.Option("--role", help="viewer, technician, operator or admin")]


def _path(username: str, tail: str = "") -> str:
    return f"/api/v1/users/{username}{tail}"


@users_app.command("list")
def list_(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Users by name (never their passwords)."""
    items = common.client().paginate("/api/v1/users", {}, limit)
    common.emit(items, as_json, lambda d: common.table(d, COLUMNS, f"{len(d)} user(s)"))


@users_app.command("create")
def create(username: str, role: RoleOpt, as_json: JsonOpt = False) -> None:
    """Create a user with a random password, printed once: hand it over now."""
    body = {"username": username, "role": role}
    made = common.client().request("POST", "/api/v1/users", json=body)

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"user {d['username']} ({d['role']}) created")
        typer.echo(f"password, shown once:\n{d['password']}")

    common.emit(made, as_json, render)


def _patch(username: str, body: dict[str, Any], as_json: bool, said: str) -> None:
    user = common.client().request("PATCH", _path(username), json=body)
    common.emit(user, as_json, lambda d: typer.echo(f"user {d['username']} {said}"))


@users_app.command("set-role")
def set_role(username: str, role: RoleOpt, as_json: JsonOpt = False) -> None:
    """Change a user's role (their sessions end)."""
    _patch(username, {"role": role}, as_json, f"is now {role}")


@users_app.command("disable")
def disable(username: str, as_json: JsonOpt = False) -> None:
    """Disable a user: they can no longer sign in and their sessions end."""
    _patch(username, {"disabled": True}, as_json, "disabled")


@users_app.command("enable")
def enable(username: str, as_json: JsonOpt = False) -> None:
    """Enable a disabled user again."""
    _patch(username, {"disabled": False}, as_json, "enabled")


@users_app.command("set-password")
def set_password(
    username: str,
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="new")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Set a user's password (12 characters or more); their sessions end."""
    _patch(username, {"password": password}, as_json, "has a new password")


@users_app.command("logout")
def logout(username: str, as_json: JsonOpt = False) -> None:
    """End every console session of a user (log out everywhere)."""
    ended = common.client().request("POST", _path(username, "/logout"))
    said = f"session(s) of {username} ended"
    common.emit(ended, as_json, lambda d: typer.echo(f"{d['sessions_ended']} {said}"))
