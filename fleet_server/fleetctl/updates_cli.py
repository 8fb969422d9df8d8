"""``fleetctl bundle ...``, ``fleetctl executions ...`` and ``fleetctl device update``:
publish bundles and follow single-device deployments through the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError

bundle_app = common.new_app(help="Firmware bundles: publish (verify + sign), list, show.")
executions_app = common.new_app(help="Deployments of a bundle to one device, and their history.")

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", "-n", help="at most this many rows (default: all)")
]

BUNDLE_COLUMNS = [
    "name",
    "model",
    "version",
    "release_counter",
    "hardware_revisions",
    "channel",
    "size",
    "published_at",
]
EXECUTION_COLUMNS = [
    "id",
    "device_id",
    "version",
    "status",
    "phase",
    "failure_class",
    "reason",
    "created_at",
    "finished_at",
]


def _fields(data: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=title)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if common.is_time_column(key):
            value = common.when(value)
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    common.console.print(table)


@bundle_app.command("publish")
def bundle_publish(
    bundle_file: Annotated[Path, typer.Argument(help="bundle .tar.gz (from fleet-bundle build)")],
    channel: Annotated[
        str | None,
        typer.Option(help="channel to publish on (default: the manifest's, else production)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a bundle: the server verifies it, signs it into the TUF repository and
    records it (operator or admin)."""
    try:
        size = bundle_file.stat().st_size
        handle = bundle_file.open("rb")
    except OSError as exc:
        raise CtlError(f"cannot read {bundle_file}: {exc}") from None
    params = {"channel": channel} if channel else None
    with handle, common.console.status(f"uploading {bundle_file.name} ({size} bytes)..."):
        result = common.client().request(
            "POST",
            "/api/v1/bundles",
            content=handle,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )
    common.emit(
        result,
        as_json,
        lambda d: typer.echo(f"published {d['name']} on {d['channel']} (sha256 {d['sha256']})"),
    )


@bundle_app.command("list")
def bundle_list(
    model: Annotated[str | None, typer.Option(help="exact model")] = None,
    version: Annotated[str | None, typer.Option(help="exact version")] = None,
    channel: Annotated[str | None, typer.Option(help="channel")] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List published bundles, newest first."""
    body = common.client().page(
        "/api/v1/bundles", {"model": model, "version": version, "channel": channel}, limit
    )
    common.emit_page(
        body, as_json, lambda d: common.table(d, BUNDLE_COLUMNS, f"{len(d)} bundle(s)")
    )


@bundle_app.command("show")
def bundle_show(name: str, as_json: JsonOpt = False) -> None:
    """Show one bundle with its manifest."""
    bundle = common.client().request("GET", f"/api/v1/bundles/{name}")
    common.emit(bundle, as_json, lambda d: _fields(d, d["name"]))


def device_update(
    device_id: str,
    bundle: Annotated[str, typer.Option("--bundle", "-b", help="published bundle name")],
    timeout: Annotated[
        list[str] | None,
        typer.Option(
            "--timeout",
            help="phase timeout override PHASE=SECONDS (accept_s, download_s, install_s, "
            "reboot_s, commit_s); repeatable",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Install a published bundle on one device; follow it with `fleetctl executions show`."""
    timeouts: dict[str, float] = {}
    for item in timeout or []:
        key, sep, value = item.partition("=")
        try:
            timeouts[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise CtlError(f"--timeout {item!r}: expected PHASE=SECONDS, e.g. download_s=3600")
    body: dict[str, Any] = {"bundle": bundle}
    if timeouts:
        body["timeouts"] = timeouts
    result = common.client().request("POST", f"/api/v1/devices/{device_id}/update", json=body)
    common.emit(
        result,
        as_json,
        lambda d: typer.echo(
            f"execution {d['id']}: {d['bundle']} -> {d['device_id']} ({d['status']})"
        ),
    )


@executions_app.command("list")
def executions_list(
    device: Annotated[str | None, typer.Option(help="device id")] = None,
    bundle: Annotated[str | None, typer.Option(help="bundle name")] = None,
    rollout: Annotated[str | None, typer.Option(help="rollout id")] = None,
    status: Annotated[
        str | None,
        typer.Option(help="pending, sent, in_progress, committed, failed or cancelled"),
    ] = None,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List executions, newest first."""
    body = common.client().page(
        "/api/v1/executions",
        {"device": device, "bundle": bundle, "rollout": rollout, "status": status},
        limit,
    )
    common.emit_page(
        body, as_json, lambda d: common.table(d, EXECUTION_COLUMNS, f"{len(d)} execution(s)")
    )


@executions_app.command("show")
def executions_show(execution_id: str, as_json: JsonOpt = False) -> None:
    """Show one execution and every state the device reported."""
    execution = common.client().request("GET", f"/api/v1/executions/{execution_id}")

    def render(d: dict[str, Any]) -> None:
        _fields({k: v for k, v in d.items() if k != "events"}, d["id"])
        common.table(
            d.get("events") or [],
            ["received_at", "state", "failure_class", "reason", "attack"],
            "history",
        )

    common.emit(execution, as_json, render)


@executions_app.command("cancel")
def executions_cancel(
    execution_id: str,
    reason: Annotated[str, typer.Option(help="why (kept in the audit log)")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Cancel a pending or sent execution (operator or admin)."""
    result = common.client().request(
        "POST", f"/api/v1/executions/{execution_id}/cancel", json={"reason": reason}
    )
    common.emit(result, as_json, lambda d: typer.echo(f"execution {d['id']} {d['status']}"))
