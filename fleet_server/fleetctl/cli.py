"""``fleetctl``: command line for ops staff, talking to the fleet server's REST API.

Tables for people, ``--json`` for scripts. The API URL and token come from
``--url``/``--token``, ``FLEET_URL``/``FLEET_TOKEN``, or ``~/.config/edgefleet/fleetctl.toml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server import __version__
from fleet_server.fleetctl import common, recalls_cli
from fleet_server.fleetctl.analytics_cli import analytics_app
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.common import JsonOpt, LimitOpt
from fleet_server.fleetctl.credentials_cli import register_credentials
from fleet_server.fleetctl.devices_views_cli import register_device_views
from fleet_server.fleetctl.groups_cli import bulk_app, groups_app
from fleet_server.fleetctl.rollout_cli import rollout_app
from fleet_server.fleetctl.sbom_cli import advisories_app, licences_app, sbom_app
from fleet_server.fleetctl.startup import install_plain_coercion, prune_groups
from fleet_server.fleetctl.tickets_cli import analytics_sla, tickets_app
from fleet_server.fleetctl.updates_cli import bundle_app, device_update, executions_app
from fleet_server.fleetctl.users_cli import users_app
from fleet_server.fleetctl.webhooks_cli import webhooks_app

app = common.new_app(
    name="fleetctl",
    help=(
        "Operate an Edgefleet fleet: devices, alarms, audit, tokens. "
        "Set the API with --url / FLEET_URL and the token with --token / FLEET_TOKEN, "
        "or in ~/.config/edgefleet/fleetctl.toml (url = ..., token = ...)."
    ),
    no_args_is_help=True,
    add_completion=False,
)
devices_app = common.new_app(
    help="The device registry: list, show, edit, tag, import, decommission, telemetry, "
    "events, commands."
)
alarms_app = common.new_app(help="Alarms raised by device faults.")
audit_app = common.new_app(help="The audit log of operator actions.")
tokens_app = common.new_app(help="API tokens (admin only).")
fleet_app = common.new_app(help="Fleet-wide views.")
app.add_typer(devices_app, name="devices")
app.add_typer(devices_app, name="device", hidden=True)
app.add_typer(alarms_app, name="alarms")
app.add_typer(audit_app, name="audit")
app.add_typer(tokens_app, name="tokens")
app.add_typer(fleet_app, name="fleet")
app.add_typer(bundle_app, name="bundle")
app.add_typer(executions_app, name="executions")
app.add_typer(rollout_app, name="rollout")
devices_app.command("update")(device_update)
for _name, _sub in recalls_cli.SUBAPPS.items():
    app.add_typer(_sub, name=_name)

register_credentials(devices_app, common.client)
register_device_views(devices_app, fleet_app)
app.add_typer(analytics_app, name="analytics")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(groups_app, name="groups")
app.add_typer(bulk_app, name="bulk")
app.add_typer(sbom_app, name="sbom")
app.add_typer(advisories_app, name="advisories")
app.add_typer(licences_app, name="licences")
app.add_typer(tickets_app, name="tickets")
analytics_app.command("sla")(analytics_sla)
app.add_typer(users_app, name="users")


@app.callback()
def _root(
    url: Annotated[str | None, typer.Option("--url", help="fleet API base URL")] = None,
    token: Annotated[str | None, typer.Option("--token", help="API token (efk_...)")] = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="wide: every column of tables, at full width"),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="comma-separated columns of tables (any row field)"),
    ] = None,
) -> None:
    """Global options."""
    if output not in (None, "wide"):
        raise CtlError(f"-o {output!r}: the only output format is wide (and --json per command)")
    common.options.url = url
    common.options.token = token
    common.options.output = output
    common.options.columns = [c for c in (columns or "").split(",") if c] or None


@app.command()
def version() -> None:
    """Print the client and protocol versions."""
    from protocol import SCHEMA_VERSION  # pydantic models: imported only when asked

    typer.echo(f"fleetctl {__version__} (protocol {SCHEMA_VERSION})")


@app.command()
def whoami(as_json: JsonOpt = False) -> None:
    """Show the token's name and role."""
    me = common.client().request("GET", "/api/v1/whoami")
    common.emit(me, as_json, lambda d: typer.echo(f"{d['name']} ({d['role']})"))


# --- devices ---------------------------------------------------------------------------

DEVICE_COLUMNS = [
    "device_id",
    "serial",
    "model",
    "hw_revision",
    "batch",
    "region",
    "channel",
    "software_version",
    "presence",
    "open_faults",
    "last_seen",
    "status",
]


@devices_app.command("list")
def devices_list(
    model: Annotated[str | None, typer.Option(help="exact model")] = None,
    hw_revision: Annotated[str | None, typer.Option(help="exact hardware revision")] = None,
    batch: Annotated[str | None, typer.Option(help="manufacturing batch/lot")] = None,
    region: Annotated[str | None, typer.Option()] = None,
    owner: Annotated[str | None, typer.Option()] = None,
    channel: Annotated[str | None, typer.Option(help="production or pre-production")] = None,
    software_version: Annotated[str | None, typer.Option()] = None,
    presence: Annotated[str | None, typer.Option(help="online, offline or unknown")] = None,
    status: Annotated[str | None, typer.Option(help="active or decommissioned")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="must carry this tag (repeatable)")] = None,
    prefix: Annotated[str | None, typer.Option(help="device id prefix")] = None,
    faulty: Annotated[
        bool | None, typer.Option("--faulty/--healthy", help="with / without open faults")
    ] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List devices matching the filters."""
    params = {
        "model": model,
        "hw_revision": hw_revision,
        "batch": batch,
        "region": region,
        "owner": owner,
        "channel": channel,
        "software_version": software_version,
        "presence": presence,
        "status": status,
        "tag": tag or [],
        "device_id_prefix": prefix,
        "has_open_faults": faulty,
    }
    body = common.client().page("/api/v1/devices", params, limit)
    common.emit_page(
        body, as_json, lambda d: common.table(d, DEVICE_COLUMNS, f"{len(d)} device(s)")
    )


@devices_app.command("show")
def devices_show(device_id: str, as_json: JsonOpt = False) -> None:
    """Show everything known about one device."""
    from rich.table import Table

    device = common.client().request("GET", f"/api/v1/devices/{device_id}")
    software = common.client().request("GET", f"/api/v1/devices/{device_id}/components")
    device["components"] = [
        f"{c['name']}@{c['version']} ({c['licence'] or 'NOASSERTION'})"
        for c in software["components"]
    ]

    def render(d: dict[str, Any]) -> None:
        table = Table(show_header=False, title=d["device_id"])
        table.add_column("field", no_wrap=True)
        table.add_column("value", overflow="fold")
        for key, value in d.items():
            if common.is_time_column(key):
                value = common.when(value)
            table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
        common.console.print(table)

    common.emit(device, as_json, render)


@devices_app.command("import")
def devices_import(
    csv_file: Annotated[Path, typer.Argument(help="factory CSV with a header row")],
    as_json: JsonOpt = False,
) -> None:
    """Import devices from the factory CSV: all rows or none (errors listed per line)."""
    try:
        body = csv_file.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {csv_file}: {exc}") from None
    with common.console.status(f"importing {csv_file.name} ({len(body)} bytes)...", spinner="dots"):
        result = common.client().request(
            "POST", "/api/v1/devices/import", content=body, headers={"Content-Type": "text/csv"}
        )
    common.emit(result, as_json, lambda d: typer.echo(f"imported {d['imported']} device(s)"))


@devices_app.command("decommission")
def devices_decommission(
    device_id: str,
    reason: Annotated[str, typer.Option(help="why (kept in the audit log)")] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Take a device out of service; its messages are rejected from then on."""
    if not yes and not typer.confirm(f"Decommission {device_id}?"):
        raise typer.Exit(1)
    device = common.client().request(
        "POST", f"/api/v1/devices/{device_id}/decommission", json={"reason": reason}
    )
    common.emit(device, as_json, lambda d: typer.echo(f"{d['device_id']} decommissioned"))


@devices_app.command("unquarantine")
def devices_unquarantine(device_id: str, as_json: JsonOpt = False) -> None:
    """Forget the versions that failed on a device (the server's view: rollouts may select
    it again); clear the agent's own list with ``fleet-agent unquarantine``."""
    device = common.client().request("POST", f"/api/v1/devices/{device_id}/unquarantine")
    common.emit(device, as_json, lambda d: typer.echo(f"{d['device_id']} unquarantined"))


def _command(device_id: str, kind: str, reason: str, as_json: bool) -> None:
    result = common.client().request(
        "POST", f"/api/v1/devices/{device_id}/commands", json={"kind": kind, "reason": reason}
    )
    common.emit(
        result,
        as_json,
        lambda d: typer.echo(f"{d['kind']} sent to {d['device_id']} as {d['id']} ({d['status']})"),
    )


@devices_app.command("reboot")
def devices_reboot(
    device_id: str,
    reason: Annotated[str, typer.Option(help="shown to the device and audit log")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Send a reboot command (operator or admin)."""
    _command(device_id, "reboot", reason, as_json)


@devices_app.command("diagnose")
def devices_diagnose(device_id: str, as_json: JsonOpt = False) -> None:
    """Ask the device for a diagnostics bundle (technician and above)."""
    _command(device_id, "collect_diagnostics", "", as_json)


@devices_app.command("commands")
def devices_commands(device_id: str, limit: LimitOpt = 20, as_json: JsonOpt = False) -> None:
    """Commands sent to a device and their status."""
    body = common.client().page(f"/api/v1/devices/{device_id}/commands", {}, limit)
    cols = ["id", "kind", "status", "created_at", "created_by", "reason", "detail"]
    common.emit_page(body, as_json, lambda d: common.table(d, cols))


# --- alarms ----------------------------------------------------------------------------


@alarms_app.command("list")
def alarms_list(
    state: Annotated[str, typer.Option(help="open, cleared or all")] = "open",
    severity: Annotated[str | None, typer.Option()] = None,
    code: Annotated[str | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="one device id")] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List alarms (open ones by default)."""
    params = {"state": state, "severity": severity, "code": code, "device_id": device}
    body = common.client().page("/api/v1/alarms", params, limit)
    cols = ["id", "device_id", "code", "severity", "state", "raised_at", "occurrences", "acked_by"]
    common.emit_page(body, as_json, lambda d: common.table(d, cols, f"{len(d)} alarm(s)"))


@alarms_app.command("ack")
def alarms_ack(alarm_id: int, as_json: JsonOpt = False) -> None:
    """Acknowledge an alarm."""
    alarm = common.client().request("POST", f"/api/v1/alarms/{alarm_id}/ack")
    common.emit(alarm, as_json, lambda d: typer.echo(f"alarm {d['id']} acknowledged"))


@fleet_app.command("fault-rates")
def fleet_fault_rates(
    by: Annotated[
        str, typer.Option(help="model, hw_revision, batch, software_version or region")
    ] = "model",
    as_json: JsonOpt = False,
) -> None:
    """Share of devices with faults per group."""
    data = common.client().request("GET", "/api/v1/fleet/fault-rates", params={"by": by})

    def render(d: dict[str, Any]) -> None:
        rows = [
            {**r, "fault_rate": "-" if r["fault_rate"] is None else f"{r['fault_rate']:.1%}"}
            for r in d["rows"]
        ]
        cols = ["value", "devices", "faulty_devices", "alarms", "open_alarms", "fault_rate"]
        common.table(rows, cols, f"fault rate by {d['by']}")

    common.emit(data, as_json, render)


# --- audit and tokens ------------------------------------------------------------------


@audit_app.command("list")
def audit_list(
    action: Annotated[str | None, typer.Option(help="action prefix, e.g. device.")] = None,
    target: Annotated[str | None, typer.Option(help="target id, e.g. a device id")] = None,
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """Recent audit entries, newest first."""
    body = common.client().page("/api/v1/audit", {"action": action, "target_id": target}, limit)
    cols = ["id", "at", "actor", "actor_role", "action", "target_type", "target_id"]
    common.emit_page(body, as_json, lambda d: common.table(d, cols))


@tokens_app.command("list")
def tokens_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="include revoked")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List API tokens (never their secrets)."""
    body = common.client().page("/api/v1/tokens", {"include_revoked": include_revoked}, None)
    cols = [
        "id",
        "name",
        "role",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
        "expires_at",
    ]
    common.emit_page(body, as_json, lambda d: common.table(d, cols))


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Option(help="who or what uses it")],
    role: Annotated[str, typer.Option(help="viewer, technician, operator or admin")],
    as_json: JsonOpt = False,
    ttl_days: Annotated[
        float | None, typer.Option("--ttl-days", help="expire after this many days")
    ] = None,
) -> None:
    """Create a token; its secret is printed once."""
    body: dict[str, object] = {"name": name, "role": role}
    if ttl_days is not None:
        body["ttl_days"] = ttl_days
    token = common.client().request("POST", "/api/v1/tokens", json=body)
    common.emit(
        token,
        as_json,
        lambda d: typer.echo(f"token {d['id']} ({d['role']}), shown once:\n{d['secret']}"),
    )


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, as_json: JsonOpt = False) -> None:
    """Revoke a token immediately."""
    token = common.client().request("DELETE", f"/api/v1/tokens/{token_id}")
    common.emit(token, as_json, lambda d: typer.echo(f"token {d['id']} revoked"))


def main() -> None:
    """Entry point of the ``fleetctl`` console script."""
    prune_groups(app, sys.argv[1:])
    install_plain_coercion()
    try:
        app()
    except CtlError as exc:
        typer.secho(exc.describe(), fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
