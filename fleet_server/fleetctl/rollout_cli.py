"""``fleetctl rollout ...``: staged rollouts through the API (create with a dry-run preview,
start, pause, resume, cancel, rollback, status, history, explain)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError

rollout_app = common.new_app(
    help="Staged rollouts: waves, canaries, automatic halts, rollback, explain.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (kept in the audit log)")]

LIST_COLUMNS = ["id", "name", "version", "state", "channel", "current_wave", "waves_total"]


def _ctl() -> ModuleType:
    return common


def _selector(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs into a registry filter (see :func:`common.selector_args`)."""
    return common.selector_args(items, "--target")


def _policy(path: Path | None, overrides: list[str]) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if path is not None:
        try:
            policy = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CtlError(f"--policy {path}: {exc}") from None
        if not isinstance(policy, dict):
            raise CtlError(f"--policy {path}: expected a JSON object")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CtlError(f"--set {item!r}: expected KEY=JSON (e.g. bake_s=3600)")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        node = policy
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = parsed
    return policy


def _print_plan(plan: dict[str, Any]) -> None:
    from rich.table import Table

    ctl = _ctl()
    table = Table(title=f"dry run: {plan['bundle']} ({plan['version']})")
    for column in ("wave", "devices", "hardware revisions", "first devices"):
        table.add_column(column)
    for wave in plan["waves"]:
        revisions = ", ".join(f"{k}: {v}" for k, v in wave["hardware_revisions"].items())
        first = ", ".join(wave["devices"][:4]) + (" ..." if len(wave["devices"]) > 4 else "")
        table.add_row(str(wave["wave"]), str(wave["size"]), revisions, first)
    ctl.console.print(table)
    ctl.console.print(f"targeted: {plan['targeted']} device(s)")
    if plan["excluded"]:
        excluded = Table(title="excluded")
        for column in ("device", "reason", "detail"):
            excluded.add_column(column)
        for row in plan["excluded"][:50]:
            excluded.add_row(row["device_id"], row["reason"], row["detail"])
        ctl.console.print(excluded)
        if len(plan["excluded"]) > 50:
            ctl.console.print(f"... and {len(plan['excluded']) - 50} more")
        ctl.console.print(
            "excluded by reason: "
            + ", ".join(f"{k}: {v}" for k, v in plan["excluded_by_reason"].items())
        )


def _print_status(d: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    ctl = _ctl()
    ctl.console.print(
        Text.assemble(
            (str(d["id"]), "bold"),
            f" {d['name']}: {d['version']} on {d['channel']} - ",
            (str(d["state"]), "bold"),
            f", wave {d['current_wave'] + 1} of {d['waves_total']}",
        )
    )
    if d.get("halt_reason"):
        ctl.console.print(
            Text.assemble(("halted", "red"), f" ({d.get('halt_stratum')}): {d['halt_reason']}")
        )
    buckets = ["pending", "sent", "in_progress", "committed", "failed", "timed_out", "cancelled"]
    waves = Table(title="per wave")
    waves.add_column("wave")
    for b in buckets:
        waves.add_column(b)
    for wave in d["waves"]:
        waves.add_row(str(wave["wave"]), *(str(wave.get(b, 0)) for b in buckets))
    ctl.console.print(waves)
    strata = Table(title="per stratum")
    strata.add_column("stratum")
    for b in buckets:
        strata.add_column(b)
    strata.add_column("failures by class")
    for name, counts in d["strata"].items():
        classes = ", ".join(
            f"{k.split(':', 1)[1]}: {v}" for k, v in counts.items() if k.startswith("failed:")
        )
        strata.add_row(name, *(str(counts.get(b, 0)) for b in buckets), classes)
    ctl.console.print(strata)
    if d.get("excluded_by_reason"):
        ctl.console.print(
            "excluded: " + ", ".join(f"{k}: {v}" for k, v in d["excluded_by_reason"].items())
        )


@rollout_app.command("create")
def create(
    bundle: Annotated[str, typer.Option("--bundle", help="bundle (TUF target) name")],
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            "-t",
            help="registry filter FIELD=VALUE, repeatable (model, hw_revision, batch, region, "
            "channel, tags=a,b, software_version, presence, ...)",
        ),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option("--policy", help="policy JSON file (see README)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="policy override KEY=JSON, e.g. bake_s=3600, repeatable"),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="a name for people")] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show who lands in which wave; create nothing")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a draft rollout (or preview it with --dry-run). Start it with `start`."""
    ctl = _ctl()
    body = {
        "name": name,
        "bundle": bundle,
        "selector": _selector(target or []),
        "policy": _policy(policy, set_ or []),
    }
    if dry_run:
        plan = ctl._client().request("POST", "/api/v1/rollouts/dry-run", json=body)
        ctl._emit(plan, as_json, _print_plan)
        return
    created = ctl._client().request("POST", "/api/v1/rollouts", json=body)
    ctl._emit(
        created,
        as_json,
        lambda d: typer.echo(
            f"created {d['id']} (draft); start it with: fleetctl rollout start {d['id']}"
        ),
    )


@rollout_app.command("start")
def start(
    rollout_id: str,
    force_reason: Annotated[
        str | None,
        typer.Option(
            "--force", help="admins: start in production without a pre-production run, and why"
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plan the waves and start."""
    ctl = _ctl()
    body = {"force_reason": force_reason} if force_reason else None
    result = ctl._client().request("POST", f"/api/v1/rollouts/{rollout_id}/start", json=body)
    ctl._emit(result, as_json, _print_status)


def _action(action: str, rollout_id: str, body: dict[str, Any], as_json: bool) -> None:
    ctl = _ctl()
    result = ctl._client().request("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json=body)
    ctl._emit(result, as_json, _print_status)


@rollout_app.command("pause")
def pause(rollout_id: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Start nothing new; devices already updating finish."""
    _action("pause", rollout_id, {"reason": reason}, as_json)


@rollout_app.command("resume")
def resume(rollout_id: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Resume a paused or halted rollout."""
    _action("resume", rollout_id, {"reason": reason}, as_json)


@rollout_app.command("cancel")
def cancel(rollout_id: str, reason: ReasonOpt = "", as_json: JsonOpt = False) -> None:
    """Stop for good; devices not sent their install yet are released."""
    _action("cancel", rollout_id, {"reason": reason}, as_json)


@rollout_app.command("rollback")
def rollback(
    rollout_id: str,
    to_version: Annotated[
        str | None, typer.Option("--to", help="known-good version (default: the policy's)")
    ] = None,
    reason: ReasonOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Send every device that took the release back to a known-good signed release."""
    _action("rollback", rollout_id, {"reason": reason, "to_version": to_version}, as_json)


@rollout_app.command("status")
def status(rollout_id: str, as_json: JsonOpt = False) -> None:
    """Progress per wave and per stratum, failures by class, exclusions."""
    ctl = _ctl()
    ctl._emit(
        ctl._client().request("GET", f"/api/v1/rollouts/{rollout_id}"), as_json, _print_status
    )


@rollout_app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="only rollouts in this state")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rollouts, newest first."""
    ctl = _ctl()
    body = ctl._client().page("/api/v1/rollouts", {"state": state}, None)
    ctl.emit_page(body, as_json, lambda d: ctl._table(d, LIST_COLUMNS, f"{len(d)} rollout(s)"))


@rollout_app.command("history")
def history(rollout_id: str, as_json: JsonOpt = False) -> None:
    """Every state change and engine decision, oldest first."""
    ctl = _ctl()
    body = ctl._client().request("GET", f"/api/v1/rollouts/{rollout_id}/events")
    ctl.emit_page(
        body,
        as_json,
        lambda d: ctl._table(d, ["at", "kind", "to_state", "wave", "message", "actor"], "history"),
    )


@rollout_app.command("explain")
def explain(
    device_id: str,
    rollout_id: Annotated[
        str | None, typer.Option("--rollout", help="one rollout (default: every active one)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Why is this device (not) updating: eligibility, wave, window, exclusion, quarantine,
    current state."""
    from rich.text import Text

    ctl = _ctl()
    params = {"rollout": rollout_id} if rollout_id else None
    report = ctl._client().request("GET", f"/api/v1/rollouts/explain/{device_id}", params=params)

    def show(d: dict[str, Any]) -> None:
        ctl.console.print(
            Text.assemble(
                (str(d["device_id"]), "bold"),
                f": {d['presence']}, runs {d['software_version']}",
            )
        )
        if not d["rollouts"]:
            ctl.console.print("no active rollout")
        for item in d["rollouts"]:
            ctl.console.print(
                f"- {item['rollout_id']} ({item['name']}, {item['version']}, {item['state']}): "
                f"{item['verdict']}"
            )

    ctl._emit(report, as_json, show)
