"""``fleetctl webhooks ...``: subscriptions to fleet events, their delivery log, a test."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.common import JsonOpt, LimitOpt

webhooks_app = common.new_app(
    help="Webhooks: signed HTTP notifications of rollout halts, alarms, offline devices, "
    "recall changes and claims.",
    no_args_is_help=True,
)

EVENTS = (
    "rollout.halted, rollout.completed, rollout.rolled_back, alarm.raised, device.offline, "
    "recall.state_changed, claim.filed, ticket.created, ticket.sla_warning, "
    "ticket.sla_breached, slo.alert"
)
LIST_COLUMNS = ["id", "name", "url", "events", "enabled", "consecutive_failures", "created_at"]
DELIVERY_COLUMNS = [
    "id",
    "event_type",
    "status",
    "attempts",
    "last_status_code",
    "last_error",
    "created_at",
    "delivered_at",
]


def _path(webhook_id: int, tail: str = "") -> str:
    return f"/api/v1/webhooks/{webhook_id}{tail}"


@webhooks_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for people")],
    url: Annotated[str, typer.Option("--url", help="receiver URL (http:// or https://)")],
    event: Annotated[list[str], typer.Option("--event", "-e", help=f"repeatable: {EVENTS}")],
    min_severity: Annotated[
        str | None, typer.Option(help="alarm.raised only at or above: warning, major, ...")
    ] = None,
    offline_after: Annotated[
        float | None, typer.Option(help="device.offline after this many seconds (default 300)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe a receiver; the signing secret is printed once (store it now)."""
    body = {
        "name": name,
        "url": url,
        "events": event,
        "min_severity": min_severity,
        "offline_after_s": offline_after,
    }
    created = common.client().request("POST", "/api/v1/webhooks", json=body)

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"webhook {d['id']} ({d['name']}) -> {d['url']}: {', '.join(d['events'])}")
        typer.echo(f"signing secret, shown once:\n{d['secret']}")

    common.emit(created, as_json, render)


@webhooks_app.command("list")
def list_(limit: LimitOpt = None, as_json: JsonOpt = False) -> None:
    """Subscriptions (never their secrets)."""
    body = common.client().page("/api/v1/webhooks", {}, limit)
    common.emit_page(body, as_json, lambda d: common.table(d, LIST_COLUMNS, f"{len(d)} webhook(s)"))


@webhooks_app.command("show")
def show(webhook_id: int, as_json: JsonOpt = False) -> None:
    """One subscription and its deliveries per status."""
    hook = common.client().request("GET", _path(webhook_id))

    def render(d: dict[str, Any]) -> None:
        for key, value in d.items():
            if common.is_time_column(key):
                value = common.when(value)
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            elif isinstance(value, dict):
                value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
            typer.echo(f"{key:22} {'-' if value is None else value}")

    common.emit(hook, as_json, render)


@webhooks_app.command("delete")
def delete(
    webhook_id: int,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a subscription and its delivery log."""
    if not yes and not typer.confirm(f"Delete webhook {webhook_id} and its delivery log?"):
        raise typer.Exit(1)
    gone = common.client().request("DELETE", _path(webhook_id))
    common.emit(gone, as_json, lambda d: typer.echo(f"webhook {d['id']} deleted"))


def _toggle(webhook_id: int, enabled: bool, as_json: bool) -> None:
    hook = common.client().request("PATCH", _path(webhook_id), json={"enabled": enabled})
    state = "enabled" if hook["enabled"] else "disabled"
    common.emit(hook, as_json, lambda d: typer.echo(f"webhook {d['id']} {state}"))


@webhooks_app.command("enable")
def enable(webhook_id: int, as_json: JsonOpt = False) -> None:
    """Enable again (after too many failures): pending deliveries resume."""
    _toggle(webhook_id, True, as_json)


@webhooks_app.command("disable")
def disable(webhook_id: int, as_json: JsonOpt = False) -> None:
    """Stop sending (events are no longer queued for it)."""
    _toggle(webhook_id, False, as_json)


@webhooks_app.command("deliveries")
def deliveries(
    webhook_id: int,
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed")] = None,
    limit: LimitOpt = 20,
    as_json: JsonOpt = False,
) -> None:
    """The delivery log, newest first: status codes, errors, attempts."""
    body = common.client().page(_path(webhook_id, "/deliveries"), {"status": status}, limit)
    common.emit_page(body, as_json, lambda d: common.table(d, DELIVERY_COLUMNS))


@webhooks_app.command("test")
def send_test(webhook_id: int, as_json: JsonOpt = False) -> None:
    """Send a signed test event now and print how the receiver answered."""
    result = common.client().request("POST", _path(webhook_id, "/test"))

    def render(d: dict[str, Any]) -> None:
        attempt = (d.get("attempt_log") or [{}])[-1]
        answer = attempt.get("status_code") or attempt.get("error") or "-"
        typer.echo(f"test event {d['event_id']}: {d['status']} (receiver answered {answer})")

    common.emit(result, as_json, render)
    if result["status"] != "delivered":
        raise typer.Exit(1)
