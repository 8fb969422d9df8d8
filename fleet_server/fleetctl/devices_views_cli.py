"""``fleetctl devices telemetry|events|edit|tag`` and ``fleetctl fleet summary``.

Reads print tables for people and, with ``--json``, the API's own answer (list answers
keep their ``{"items", "next_cursor", "total"}`` envelope). Edits go through
``PATCH /api/v1/devices/{id}``, which audits before and after.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.common import JsonOpt, LimitOpt

TELEMETRY_FIRST = ("ts", "cpu_pct", "mem_pct", "disk_pct", "temp_c")
"""Telemetry columns shown first; the device's other reported signals follow."""


def telemetry_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The columns of a telemetry table: time and the main vitals first, then every
    other signal at least one row reported (signals never reported are left out)."""
    reported = [
        key
        for key in dict.fromkeys(k for row in rows for k in row)
        if key != "custom" and any(row.get(key) is not None for row in rows)
    ]
    return [c for c in TELEMETRY_FIRST if c in reported or c == "ts"] + [
        c for c in reported if c not in TELEMETRY_FIRST
    ]


def edit_body(values: dict[str, str | None], clear: list[str]) -> dict[str, Any]:
    """The PATCH body of ``devices edit``: the fields given (``values``: every editable
    field, None = not given), and null for those named by ``--clear``; a field both set
    and cleared, or an unknown one, is refused."""
    body: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    for field in clear:
        if field not in values:
            raise CtlError(f"--clear {field!r}: not an editable field ({', '.join(values)})")
        if field in body:
            raise CtlError(f"{field}: both set and cleared")
        body[field] = None
    if not body:
        raise CtlError("nothing to change: give at least one field option or --clear FIELD")
    return body


def retagged(tags: list[str], add: list[str], remove: bool) -> list[str]:
    """``tags`` with ``add`` appended (in order, once each), or removed with ``remove``."""
    if remove:
        return [t for t in tags if t not in add]
    return list(dict.fromkeys([*tags, *add]))


def register_device_views(devices_app: typer.Typer, fleet_app: typer.Typer) -> None:
    """Add the commands of this module to ``fleetctl devices`` and ``fleetctl fleet``."""

    @devices_app.command("telemetry")
    def devices_telemetry(
        device_id: str,
        since: Annotated[
            str | None, typer.Option(help="ISO 8601 time, e.g. 2026-12-01T00:00:00Z")
        ] = None,
        until: Annotated[str | None, typer.Option(help="ISO 8601 time")] = None,
        limit: LimitOpt = 20,
        as_json: JsonOpt = False,
    ) -> None:
        """Latest raw telemetry samples of a device, newest first."""
        params = {"since": since, "until": until}
        body = common.client().page(f"/api/v1/devices/{device_id}/telemetry", params, limit)

        def render(rows: list[dict[str, Any]]) -> None:
            title = f"{device_id}: {len(rows)} sample(s)"
            common.table(rows, telemetry_columns(rows), title)

        common.emit_page(body, as_json, render)

    @devices_app.command("events")
    def devices_events(
        device_id: str,
        kind: Annotated[
            str | None, typer.Option(help="one kind: boot, fault_raised, update_state, ...")
        ] = None,
        limit: LimitOpt = 50,
        as_json: JsonOpt = False,
    ) -> None:
        """A device's events (boots, faults, update states, command answers), newest
        first."""
        body = common.client().page(f"/api/v1/devices/{device_id}/events", {"kind": kind}, limit)
        cols = ["id", "ts", "kind", "code", "received_at", "data"]
        common.emit_page(body, as_json, lambda rows: common.table(rows, cols))

    @devices_app.command("edit")
    def devices_edit(
        device_id: str,
        serial: Annotated[str | None, typer.Option()] = None,
        model: Annotated[str | None, typer.Option()] = None,
        hw_revision: Annotated[str | None, typer.Option()] = None,
        batch: Annotated[str | None, typer.Option()] = None,
        production_date: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
        activation_date: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
        region: Annotated[str | None, typer.Option()] = None,
        timezone: Annotated[str | None, typer.Option(help="IANA zone, e.g. Europe/Berlin")] = None,
        owner: Annotated[str | None, typer.Option()] = None,
        channel: Annotated[str | None, typer.Option(help="production or pre-production")] = None,
        clear: Annotated[
            list[str] | None, typer.Option("--clear", help="set this field to empty (repeatable)")
        ] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Change registry fields of one device (operator; audited with before/after)."""
        values = {
            "serial": serial,
            "model": model,
            "hw_revision": hw_revision,
            "batch": batch,
            "production_date": production_date,
            "activation_date": activation_date,
            "region": region,
            "timezone": timezone,
            "owner": owner,
            "channel": channel,
        }
        body = edit_body(values, clear or [])
        device = common.client().request("PATCH", f"/api/v1/devices/{device_id}", json=body)
        common.emit(
            device,
            as_json,
            lambda d: typer.echo(f"{d['device_id']} updated: {', '.join(sorted(body))}"),
        )

    @devices_app.command("tag")
    def devices_tag(
        device_id: str,
        tags: Annotated[list[str], typer.Argument(help="tags to add (or remove with --remove)")],
        remove: Annotated[bool, typer.Option("--remove", help="remove these tags")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Add tags to one device, or remove them (for many devices: ``fleetctl bulk
        tag``)."""
        api = common.client()
        current = api.request("GET", f"/api/v1/devices/{device_id}")["tags"]
        wanted = retagged(list(current), tags, remove)
        device = api.request("PATCH", f"/api/v1/devices/{device_id}", json={"tags": wanted})
        common.emit(
            device,
            as_json,
            lambda d: typer.echo(f"{d['device_id']} tags: {', '.join(d['tags']) or '-'}"),
        )

    @fleet_app.command("summary")
    def fleet_summary(as_json: JsonOpt = False) -> None:
        """Head counts: devices, presence, open alarms by severity."""
        data = common.client().request("GET", "/api/v1/fleet/summary")

        def render(d: dict[str, Any]) -> None:
            def counts(values: dict[str, int]) -> str:
                return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "-"

            typer.echo(f"devices: {d['devices']} active, {d['decommissioned']} decommissioned")
            typer.echo(f"presence: {counts(d['presence'])}")
            typer.echo(f"open alarms: {d['open_alarms']} ({counts(d['open_alarms_by_severity'])})")

        common.emit(data, as_json, render)
