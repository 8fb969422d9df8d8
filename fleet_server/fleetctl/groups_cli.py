"""``fleetctl groups ...`` (saved device groups) and ``fleetctl bulk ...`` (bulk actions
over a group or a selector, with a dry-run count and a confirmation)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.common import JsonOpt, LimitOpt

groups_app = common.new_app(
    help="Saved device groups: static (a list) or dynamic (a selector matched when used).",
    no_args_is_help=True,
)
bulk_app = common.new_app(
    help="Bulk actions over a group or selector: tag, untag, set fields, reboot, check "
    "update, collect diagnostics. Shows the count and asks before acting (or --yes).",
    no_args_is_help=True,
)

GROUP_COLUMNS = ["name", "kind", "devices", "selector", "description", "updated_at"]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", "-w", help="selector FIELD=VALUE, repeatable (e.g. region=eu)"),
]
GroupOpt = Annotated[str | None, typer.Option("--group", "-g", help="a saved group")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (kept in the audit log)")]


@groups_app.command("create")
def create(
    name: str,
    device: Annotated[
        list[str] | None, typer.Option("--device", "-d", help="static member, repeatable")
    ] = None,
    where: WhereOpt = None,
    description: Annotated[str, typer.Option(help="what the group is for")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Save a group: --device ... makes a static group, --where ... a dynamic one."""
    if bool(device) == bool(where):
        raise CtlError("give either --device (a static group) or --where (a dynamic one)")
    body: dict[str, Any] = {"name": name, "description": description}
    if device:
        body.update(kind="static", device_ids=device)
    else:
        body.update(kind="dynamic", selector=common.selector_args(where or [], "--where"))
    group = common.client().request("POST", "/api/v1/groups", json=body)
    common.emit(
        group,
        as_json,
        lambda d: typer.echo(f"group {d['name']} ({d['kind']}): {d['devices']} device(s)"),
    )


@groups_app.command("list")
def list_(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Groups with their current number of active devices."""
    body = common.client().page("/api/v1/groups", {}, limit)
    common.emit_page(body, as_json, lambda d: common.table(d, GROUP_COLUMNS, f"{len(d)} group(s)"))


@groups_app.command("show")
def show(name: str, limit: LimitOpt = 50, as_json: JsonOpt = False) -> None:
    """A group and its devices as of now (``--json``: the group's answer with the
    members' list answer under ``members``)."""
    api = common.client()
    group = api.request("GET", f"/api/v1/groups/{name}")
    group["members"] = api.page(f"/api/v1/groups/{name}/devices", {}, limit)

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"{d['name']} ({d['kind']}): {d['devices']} device(s) {d['description']}")
        if d["selector"]:
            typer.echo(f"selector: {d['selector']}")
        cols = ["device_id", "model", "hw_revision", "region", "software_version", "presence"]
        common.table(d["members"]["items"], cols)

    common.emit(group, as_json, render)


@groups_app.command("edit")
def edit(
    name: str,
    add: Annotated[list[str] | None, typer.Option("--add", help="static: add device")] = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="static: remove device")
    ] = None,
    where: WhereOpt = None,
    description: Annotated[str | None, typer.Option(help="new description")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add / remove members of a static group, or replace a dynamic group's selector."""
    body: dict[str, Any] = {
        "add_devices": add or [],
        "remove_devices": remove or [],
        "description": description,
    }
    if where:
        body["selector"] = common.selector_args(where, "--where")
    group = common.client().request("PATCH", f"/api/v1/groups/{name}", json=body)
    common.emit(
        group, as_json, lambda d: typer.echo(f"group {d['name']}: {d['devices']} device(s)")
    )


@groups_app.command("delete")
def delete(name: str, yes: YesOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a group (its devices stay as they are)."""
    if not yes and not typer.confirm(f"Delete group {name}?"):
        raise typer.Exit(1)
    group = common.client().request("DELETE", f"/api/v1/groups/{name}")
    common.emit(group, as_json, lambda d: typer.echo(f"group {d['name']} deleted"))


def _bulk(
    action: str,
    group: str | None,
    where: list[str] | None,
    yes: bool,
    as_json: bool,
    **extra: Any,
) -> None:
    """Dry run, show the count, confirm (or --yes), execute with the confirmation token."""
    if bool(group) == bool(where):
        raise CtlError("give either --group NAME or --where FIELD=VALUE ...")
    body: dict[str, Any] = {"action": action, **extra}
    if group:
        body["group"] = group
    else:
        body["selector"] = common.selector_args(where or [], "--where")
    api = common.client()
    preview = api.request("POST", "/api/v1/bulk", json={**body, "dry_run": True})
    if preview["count"] == 0:
        common.emit(preview, as_json, lambda _d: typer.echo("no device matches; nothing to do"))
        return
    if not yes:
        sample = ", ".join(preview["sample"])
        more = " ..." if preview["count"] > len(preview["sample"]) else ""
        typer.echo(f"{action} on {preview['count']} device(s): {sample}{more}", err=as_json)
        if not typer.confirm("Proceed?", err=as_json):
            raise typer.Exit(1)
    done = api.request(
        "POST", "/api/v1/bulk", json={**body, "confirmation_token": preview["confirmation_token"]}
    )

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"{d['action']}: {d['succeeded']}/{d['count']} device(s) ({d['bulk_id']})")
        for failure in d["failed"]:
            typer.echo(f"  failed {failure['device_id']}: {failure['error']}")

    common.emit(done, as_json, render)
    if done["failed"]:
        raise typer.Exit(1)


def _tagging(action: str, help_text: str) -> None:
    def command(
        tags: Annotated[list[str], typer.Argument(help="tags")],
        group: GroupOpt = None,
        where: WhereOpt = None,
        yes: YesOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        _bulk(action, group, where, yes, as_json, tags=tags)

    command.__doc__ = help_text
    bulk_app.command(action)(command)


_tagging("tag", "Add tags to every device of a group or selector.")
_tagging("untag", "Remove tags from every device of a group or selector.")


@bulk_app.command("set")
def set_fields(
    fields: Annotated[list[str], typer.Argument(help="FIELD=VALUE, e.g. owner=acme region=eu")],
    group: GroupOpt = None,
    where: WhereOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Set registry fields (owner, region, channel, batch, ...) on every device."""
    values: dict[str, Any] = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"{item!r}: expected FIELD=VALUE")
        values[key] = value
    _bulk("set_fields", group, where, yes, as_json, fields=values)


def _command(kind: str, help_text: str) -> None:
    def command(
        group: GroupOpt = None,
        where: WhereOpt = None,
        reason: ReasonOpt = "",
        yes: YesOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        _bulk(kind, group, where, yes, as_json, reason=reason)

    command.__doc__ = help_text
    bulk_app.command(kind.replace("_", "-"))(command)


_command("reboot", "Reboot every device of a group or selector (operator).")
_command("check_update", "Ask every device to check for an update (operator).")
_command("collect_diagnostics", "Ask every device for a diagnostics bundle (technician).")
