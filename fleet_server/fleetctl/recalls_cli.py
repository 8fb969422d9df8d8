"""``fleetctl recall|warranty|claim|rma``: recalls, warranty, claims and returns.

Thin commands over ``/api/v1/recalls``, ``/api/v1/warranty/rules``, ``/api/v1/claims``
and ``/api/v1/rmas``; tables for people, ``--json`` for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import ApiClient, CtlError

recall_app = common.new_app(
    help="Recall campaigns: create from a JSON file, open (freeze), explain, add, progress, "
    "export.",
    no_args_is_help=True,
)
warranty_app = common.new_app(
    help="Warranty coverage rules per model and region.", no_args_is_help=True
)
claim_app = common.new_app(help="Warranty claims and their automatic checks.", no_args_is_help=True)
rma_app = common.new_app(
    help="Returns: claimed -> approved -> returned -> inspected -> refurbished | scrapped.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]


def _client() -> ApiClient:
    return common.client()


def _emit(data: Any, as_json: bool, columns: list[str], rows: list[dict[str, Any]]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        common.table(rows, columns)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _campaign_row(c: dict[str, Any]) -> dict[str, Any]:
    comp = c["completion"]
    return {
        "id": c["id"],
        "state": c["state"],
        "title": c["title"],
        "population": comp["population"],
        "remedied": comp["remedied"] + comp["not_needed"],
        "unreachable": comp["unreachable"],
        "raw": _rate(comp["raw_rate"]),
        "adjusted": _rate(comp["adjusted_rate"]),
    }


CAMPAIGN_COLUMNS = [
    "id",
    "state",
    "title",
    "population",
    "remedied",
    "unreachable",
    "raw",
    "adjusted",
]


@recall_app.command("list")
def recall_list(as_json: JsonOpt = False) -> None:
    """Campaigns with completion (raw = done/population, adjusted excludes unreachable)."""
    body = _client().page("/api/v1/recalls", {}, None)
    _emit(body, as_json, CAMPAIGN_COLUMNS, [_campaign_row(c) for c in body["items"]])


@recall_app.command("create")
def recall_create(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON: id, title, scope, remedy_version, blocked_versions, physical_action, ..."
        ),
    ],
    as_json: JsonOpt = False,
) -> None:
    """Draft a campaign from a JSON file (see the README for the scope clauses)."""
    try:
        body = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CtlError(f"{file}: cannot read a JSON campaign: {exc}") from None
    c = _client().request("POST", "/api/v1/recalls", json=body)
    _emit(c, as_json, CAMPAIGN_COLUMNS, [_campaign_row(c)])


@recall_app.command("preview")
def recall_preview(campaign_id: str, as_json: JsonOpt = False) -> None:
    """Devices the scope matches now (for an open campaign: only ones not yet in it)."""
    body = _client().request("GET", f"/api/v1/recalls/{campaign_id}/preview")
    rows = [{"device_id": d["device_id"], "matched": d["matched"]} for d in body["devices"]]
    _emit(body, as_json, ["device_id", "matched"], rows)


@recall_app.command("open")
def recall_open(
    campaign_id: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Freeze the population and open the campaign (its version blocks take effect)."""
    if not yes:
        typer.confirm(f"open recall {campaign_id} and freeze its population?", abort=True)
    c = _client().request("POST", f"/api/v1/recalls/{campaign_id}/open")
    _emit(c, as_json, CAMPAIGN_COLUMNS, [_campaign_row(c)])


@recall_app.command("close")
def recall_close(campaign_id: str, as_json: JsonOpt = False) -> None:
    """Close an open campaign (a draft is cancelled)."""
    c = _client().request("POST", f"/api/v1/recalls/{campaign_id}/close")
    _emit(c, as_json, CAMPAIGN_COLUMNS, [_campaign_row(c)])


@recall_app.command("explain")
def recall_explain(campaign_id: str, device_id: str, as_json: JsonOpt = False) -> None:
    """Why a device is (or is not) in the recall, clause by clause."""
    e = _client().request("GET", f"/api/v1/recalls/{campaign_id}/devices/{device_id}")
    if as_json:
        typer.echo(json.dumps(e, indent=2))
        return
    typer.echo(
        f"{device_id}: {'in' if e['in_population'] else 'not in'} {campaign_id}"
        + (f" ({e['state']}, {e['added_how']})" if e["in_population"] else "")
    )
    for line in e["frozen_reason"] or []:
        typer.echo(f"  frozen: {line}")
    for line in e["matched_now"]:
        typer.echo(f"  now matches: {line}")
    for line in e["failed_now"]:
        typer.echo(f"  now fails:   {line}")


@recall_app.command("add")
def recall_add(campaign_id: str, device_ids: list[str], as_json: JsonOpt = False) -> None:
    """Add devices found after opening (each must match the predicate now)."""
    body = _client().request(
        "POST", f"/api/v1/recalls/{campaign_id}/devices", json={"device_ids": device_ids}
    )
    _emit(body, as_json, ["added"], [{"added": body["added"]}])


@recall_app.command("set-state")
def recall_set_state(
    campaign_id: str,
    device_id: str,
    state: Annotated[str, typer.Argument(help="remedied, not_needed, unreachable, notified")],
    note: Annotated[str, typer.Option("--note", help="what was done or found")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Record a member's outcome (physical remedy, inspection, unreachable)."""
    body = _client().request(
        "POST",
        f"/api/v1/recalls/{campaign_id}/devices/{device_id}/state",
        json={"state": state, "note": note},
    )
    _emit(body, as_json, ["device_id", "state", "remedied_via", "note"], [body])


outcomes_app = typer.Typer(
    help="Bulk member outcomes from a field-service CSV.", no_args_is_help=True
)
recall_app.add_typer(outcomes_app, name="outcomes")


@outcomes_app.command("import")
def recall_outcomes_import(
    campaign_id: str,
    csv_file: Annotated[Path, typer.Argument(help="CSV: device_id (or serial), state, note, via")],
    as_json: JsonOpt = False,
) -> None:
    """Apply every row or none; a bad row is reported with its line and column."""
    try:
        body = csv_file.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {csv_file}: {exc}") from None
    result = _client().request(
        "POST",
        f"/api/v1/recalls/{campaign_id}/outcomes",
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    rows = [{"state": k, "devices": v} for k, v in sorted(result["by_state"].items())]
    _emit(result, as_json, ["state", "devices"], rows)


@recall_app.command("progress")
def recall_progress(campaign_id: str, as_json: JsonOpt = False) -> None:
    """Completion over time (snapshots), raw and adjusted rates."""
    body = _client().request("GET", f"/api/v1/recalls/{campaign_id}/progress")
    rows = [
        {**s, "raw_rate": _rate(s["raw_rate"]), "adjusted_rate": _rate(s["adjusted_rate"])}
        for s in body["snapshots"]
    ]
    _emit(
        body,
        as_json,
        ["at", "population", "remedied", "not_needed", "unreachable", "raw_rate", "adjusted_rate"],
        rows,
    )


@recall_app.command("export")
def recall_export(
    campaign_id: str,
    what: Annotated[str, typer.Argument(help="affected or progress")] = "affected",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file (default stdout)")] = None,
) -> None:
    """CSV of the affected list or of the progress report."""
    if what not in ("affected", "progress"):
        raise CtlError("export: choose 'affected' or 'progress'")
    data = _client().request("GET", f"/api/v1/recalls/{campaign_id}/export/{what}.csv")
    text = data.decode() if isinstance(data, bytes) else str(data)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@warranty_app.command("rules")
def warranty_rules(as_json: JsonOpt = False) -> None:
    """Coverage rules."""
    body = _client().request("GET", "/api/v1/warranty/rules")
    _emit(body, as_json, ["model", "region", "months", "covers"], body["items"])


@warranty_app.command("set-rule")
def warranty_set_rule(
    model: str,
    months: int,
    covers: Annotated[list[str], typer.Option("--covers", help='failure mode / part kind, or "*"')],
    region: Annotated[str, typer.Option("--region", help="region, * = any")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """Create or replace coverage for a model in a region."""
    r = _client().request(
        "PUT",
        "/api/v1/warranty/rules",
        json={"model": model, "region": region, "months": months, "covers": covers},
    )
    _emit(r, as_json, ["model", "region", "months", "covers"], [r])


def _claim_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**c, "failed_checks": [ch["name"] for ch in c["checks"] if not ch["passed"]] or "none"}
        for c in items
    ]


CLAIM_COLUMNS = ["id", "device_id", "failure_mode", "failure_date", "state", "failed_checks"]


@claim_app.command("list")
def claim_list(
    state: Annotated[str | None, typer.Option("--state")] = None, as_json: JsonOpt = False
) -> None:
    """Claims with the checks that failed (for the reviewer)."""
    body = _client().page("/api/v1/claims", {"state": state}, None)
    _emit(body, as_json, CLAIM_COLUMNS, _claim_rows(body["items"]))


@claim_app.command("file")
def claim_file(
    device: str,
    failure_mode: str,
    failure_date: Annotated[str, typer.Argument(help="YYYY-MM-DD")],
    part_serial: Annotated[str | None, typer.Option("--part")] = None,
    as_json: JsonOpt = False,
) -> None:
    """File a claim; the automatic checks are printed."""
    c = _client().request(
        "POST",
        "/api/v1/claims",
        json={
            "device": device,
            "failure_mode": failure_mode,
            "failure_date": failure_date,
            "part_serial": part_serial,
        },
    )
    if not as_json:
        typer.echo(f"claim {c['id']} filed for {c['device_id']} ({c['state']})")
    _emit(c, as_json, ["name", "passed", "detail"], c["checks"])


@claim_app.command("show")
def claim_show(claim_id: int, as_json: JsonOpt = False) -> None:
    """One claim: its state, decision and every automatic check with its detail."""
    c = _client().request("GET", f"/api/v1/claims/{claim_id}")
    if not as_json:
        typer.echo(
            f"claim {c['id']}: {c['device_id']} {c['failure_mode']} on {c['failure_date']}, "
            f"{c['state']}"
        )
    _emit(c, as_json, ["name", "passed", "detail"], c["checks"])


@claim_app.command("recheck")
def claim_recheck(claim_id: int, as_json: JsonOpt = False) -> None:
    """Run a claim's checks again (e.g. alarms uploaded late by an offline device)."""
    c = _client().request("POST", f"/api/v1/claims/{claim_id}/recheck")
    _emit(c, as_json, ["name", "passed", "detail"], c["checks"])


@claim_app.command("decide")
def claim_decide(
    claim_id: int,
    decision: Annotated[str, typer.Argument(help="approved or rejected")],
    note: Annotated[str, typer.Option("--note", help="why (required)")],
    as_json: JsonOpt = False,
) -> None:
    """Approve or reject a claim."""
    c = _client().request(
        "POST", f"/api/v1/claims/{claim_id}/decision", json={"decision": decision, "note": note}
    )
    _emit(c, as_json, CLAIM_COLUMNS, _claim_rows([c]))


RMA_COLUMNS = ["id", "state", "device_id", "part_serial", "allowed_next", "note"]


@rma_app.command("list")
def rma_list(
    state: Annotated[str | None, typer.Option("--state")] = None, as_json: JsonOpt = False
) -> None:
    """RMAs and the moves allowed next."""
    body = _client().page("/api/v1/rmas", {"state": state}, None)
    _emit(body, as_json, RMA_COLUMNS, body["items"])


@rma_app.command("open")
def rma_open(
    claim_id: Annotated[int | None, typer.Option("--claim")] = None,
    device_id: Annotated[str | None, typer.Option("--device")] = None,
    part_serial: Annotated[str | None, typer.Option("--part")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Open an RMA from a claim, for a device and/or a part."""
    r = _client().request(
        "POST",
        "/api/v1/rmas",
        json={"claim_id": claim_id, "device_id": device_id, "part_serial": part_serial},
    )
    _emit(r, as_json, RMA_COLUMNS, [r])


@rma_app.command("move")
def rma_move(
    rma_id: int,
    state: str,
    note: Annotated[str, typer.Option("--note")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Move an RMA to its next state (an illegal move says which are allowed)."""
    r = _client().request(
        "POST", f"/api/v1/rmas/{rma_id}/transition", json={"state": state, "note": note}
    )
    _emit(r, as_json, RMA_COLUMNS, [r])


PART_COLUMNS = [
    "serial",
    "kind",
    "condition",
    "stock_state",
    "installed_on",
    "hours_in_service",
    "reuse_count",
]


@rma_app.command("part-add")
def part_add(
    serial: str,
    kind: str,
    condition: Annotated[str, typer.Option("--condition", help="new or refurbished")] = "new",
    as_json: JsonOpt = False,
) -> None:
    """Register a serialised part in stock."""
    part = _client().request(
        "POST", "/api/v1/parts", json={"serial": serial, "kind": kind, "condition": condition}
    )
    _emit(part, as_json, PART_COLUMNS, [part])


@rma_app.command("part-install")
def part_install(serial: str, device_id: str, as_json: JsonOpt = False) -> None:
    """Install a part from stock in a device (reuse is tracked for refurbished parts)."""
    part = _client().request(
        "POST", f"/api/v1/parts/{serial}/install", json={"device_id": device_id}
    )
    _emit(part, as_json, PART_COLUMNS, [part])


@rma_app.command("part-show")
def part_show(serial: str, as_json: JsonOpt = False) -> None:
    """A part's genealogy: installations, repairs, hours in service."""
    part = _client().request("GET", f"/api/v1/parts/{serial}")
    if as_json:
        typer.echo(json.dumps(part, indent=2))
        return
    common.table([part], PART_COLUMNS)
    common.table(
        part["installations"],
        ["device_id", "condition", "installed_at", "removed_at", "failed"],
        title="installations",
    )


@rma_app.command("parts-reliability")
def parts_reliability(
    kind: Annotated[str | None, typer.Option("--kind")] = None, as_json: JsonOpt = False
) -> None:
    """Failures per 1000 h in service of parts installed new vs refurbished."""
    body = _client().request(
        "GET", "/api/v1/analytics/parts-reliability", params={"kind": kind} if kind else {}
    )
    rows = [{"condition": c, **v} for c, v in body["by_condition"].items()]
    _emit(
        body,
        as_json,
        ["condition", "installations", "failures", "hours", "rate_per_1000h", "ci95"],
        rows,
    )


SUBAPPS = {"recall": recall_app, "warranty": warranty_app, "claim": claim_app, "rma": rma_app}
"""Sub-apps mounted by ``fleetctl`` (name -> app)."""
