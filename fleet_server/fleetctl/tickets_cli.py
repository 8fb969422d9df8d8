"""``fleetctl tickets ...`` (support tickets, SLA clocks, the helpdesk importer, the status
page) and the offline ``fleetctl analytics sla`` over a helpdesk event log.

``tickets import`` sends the file to the server, which imports all rows or none;
``analytics sla`` parses the same format locally with the same parser and needs no
server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fleet_server.fleetctl import common
from fleet_server.fleetctl.client import CtlError
from fleet_server.fleetctl.common import JsonOpt, LimitOpt

tickets_app = common.new_app(
    help="Support tickets: list, show, open, move, comment, link; SLA clocks; import a "
    "helpdesk's history; the service status page.",
    no_args_is_help=True,
)

LIST_COLUMNS = ["number", "state", "priority", "category", "title", "assignee", "sla"]
FormatOpt = Annotated[str, typer.Option("--format", help="log format: servicenow")]
DateOpt = Annotated[
    str | None,
    typer.Option(
        "--date-format",
        help="strptime format of the dates (default: day first, "
        "29-02-2016 01:16 or 29/02/2016 01:16)",
    ),
]


def _fail(message: str) -> NoReturn:
    """Bad local input: one error message on stderr, exit status 2 (as the other
    offline analytics)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _path(number: str, tail: str = "") -> str:
    return f"/api/v1/tickets/{number}{tail}"


@tickets_app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="only this state")] = None,
    category: Annotated[str | None, typer.Option(help="only this category")] = None,
    device: Annotated[str | None, typer.Option(help="only tickets linked to this device")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="only the backlog")] = False,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Tickets, newest first, with their next SLA deadline ("breaching in 2 h")."""
    params = {
        "state": state,
        "category": category,
        "device_id": device,
        "open_only": open_only or None,
    }
    items = common.client().paginate("/api/v1/tickets", params, limit)
    common.emit(items, as_json, lambda d: common.table(d, LIST_COLUMNS, f"{len(d)} ticket(s)"))


@tickets_app.command("breaching")
def breaching(
    within: Annotated[float, typer.Option("--within", help="hours")] = 4.0,
    limit: LimitOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """SLA targets that breach within the next hours, soonest first."""
    items = common.client().paginate("/api/v1/tickets/breaching", {"within_h": within}, limit)
    cols = ["number", "target", "sla", "priority", "state", "assignee", "title"]
    common.emit(items, as_json, lambda d: common.table(d, cols, f"{len(d)} due within {within} h"))


@tickets_app.command("show")
def show(number: str, as_json: JsonOpt = False) -> None:
    """One ticket with its comments, links, history and SLA clocks."""
    client = common.client()
    t = client.request("GET", _path(number))
    t["sla"] = client.request("GET", _path(number, "/sla"))

    def render(d: dict[str, Any]) -> None:
        typer.echo(f"{d['number']} [{d['state']}] P{d['priority']} {d['category']}: {d['title']}")
        typer.echo(
            f"requester {d['requester']} ({d['requester_kind']}), assignee "
            f"{d['assignee'] or '-'}, next: {', '.join(d['allowed_next']) or 'none'}"
        )
        clocks = d["sla"]["targets"]
        if clocks:
            typer.echo(f"SLA policy {d['sla']['policy']}:")
            common.table(clocks, ["target", "state", "percent", "breached", "label"])
        for link in d["links"]:
            typer.echo(f"  -> {link['kind']} {link['ref']}")
        for c in d["comments"]:
            kind = "public" if c["public"] else "internal"
            typer.echo(f"  {common.when(c['at'])} {c['author']} ({kind}): {c['body']}")

    common.emit(t, as_json, render)


@tickets_app.command("create")
def create(
    title: Annotated[str, typer.Argument(help="what is wrong")],
    category: Annotated[
        str,
        typer.Option(
            help="device_hardware, device_software, "
            "web_mobile_app, cloud_infrastructure, "
            "security_incident, third_party_app"
        ),
    ],
    requester: Annotated[str, typer.Option(help="who asks")],
    impact: Annotated[int, typer.Option(min=1, max=3, help="1 high .. 3 low")] = 3,
    urgency: Annotated[int, typer.Option(min=1, max=3, help="1 high .. 3 low")] = 3,
    internal: Annotated[bool, typer.Option(help="the requester is internal")] = False,
    device: Annotated[list[str] | None, typer.Option(help="link a device (repeatable)")] = None,
    description: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Open a ticket; the priority follows impact x urgency."""
    body = {
        "title": title,
        "category": category,
        "requester": requester,
        "impact": impact,
        "urgency": urgency,
        "requester_kind": "internal" if internal else "customer",
        "description": description,
        "links": [{"kind": "device", "ref": d} for d in device or []],
    }
    t = common.client().request("POST", "/api/v1/tickets", json=body)
    common.emit(t, as_json, lambda d: typer.echo(f"{d['number']} opened, priority {d['priority']}"))


@tickets_app.command("move")
def move(
    number: str,
    state: Annotated[
        str,
        typer.Argument(
            help="in_progress, pending_customer, "
            "pending_third_party, resolved, closed, reopened, "
            "cancelled"
        ),
    ],
    note: str = "",
    as_json: JsonOpt = False,
) -> None:
    """Move a ticket to its next state."""
    t = common.client().request(
        "POST", _path(number, "/transition"), json={"state": state, "note": note}
    )
    common.emit(t, as_json, lambda d: typer.echo(f"{d['number']} is {d['state']}"))


@tickets_app.command("comment")
def comment(
    number: str,
    body: Annotated[str, typer.Argument(help="the text")],
    public: Annotated[bool, typer.Option(help="visible to the requester (a response)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add an internal (default) or public comment."""
    c = common.client().request(
        "POST", _path(number, "/comments"), json={"body": body, "public": public}
    )
    common.emit(c, as_json, lambda d: typer.echo(f"comment {d['id']} added"))


@tickets_app.command("link")
def link(
    number: str,
    kind: Annotated[
        str, typer.Argument(help="device, alarm, claim, rma, recall, rollout or advisory")
    ],
    ref: str,
    remove: Annotated[bool, typer.Option("--remove", help="unlink instead")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Link a ticket to a device, alarm, claim, RMA, recall or rollout (or unlink)."""
    client = common.client()
    if remove:
        out = client.request("DELETE", _path(number, f"/links/{kind}/{ref}"))
    else:
        out = client.request("POST", _path(number, "/links"), json={"kind": kind, "ref": ref})
    common.emit(out, as_json, lambda d: common.table(d["links"], ["kind", "ref", "created_by"]))


@tickets_app.command("import")
def import_(
    csv: Annotated[Path, typer.Option("--csv", help="the event log", show_default=False)],
    fmt: FormatOpt = "servicenow",
    date_format: DateOpt = None,
    category: Annotated[
        str, typer.Option(help="category for incidents whose own is not one of ours")
    ] = "device_software",
    as_json: JsonOpt = False,
) -> None:
    """Import a helpdesk event log: all rows or none (problems listed by line and column)."""
    try:
        body = csv.read_bytes()
    except OSError as exc:
        raise CtlError(f"cannot read {csv}: {exc}") from None
    params = {"format": fmt, "category": category}
    if date_format:
        params["date_format"] = date_format
    out = common.client().request(
        "POST",
        "/api/v1/tickets/import",
        content=body,
        params=params,
        headers={"Content-Type": "text/csv"},
    )
    common.emit(
        out,
        as_json,
        lambda d: typer.echo(
            f"imported {d['tickets']} ticket(s), {d['events']} event(s), {d['closed']} closed"
        ),
    )


@tickets_app.command("vendors")
def vendors(as_json: JsonOpt = False) -> None:
    """Underpinning contracts: time pending on each vendor and its breaches."""
    out = common.client().request("GET", "/api/v1/support/vendors")
    cols = ["vendor", "target_h", "tickets", "pending_h", "breached", "waiting_now"]
    common.emit(out, as_json, lambda d: common.table(d["vendors"], cols))


@tickets_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """The service status page: SLOs, error budgets, alerts, 90-day availability."""
    out = common.client().request("GET", "/api/v1/status")

    def render(d: dict[str, Any]) -> None:
        rows = [
            {**c, "alerts": ", ".join(f"{a['severity']}@{a['factor']}" for a in c["alerts"]) or "-"}
            for c in d["components"]
        ]
        common.table(
            rows,
            [
                "component",
                "objective",
                "sli",
                "budget_remaining",
                "burn_rate_1h",
                "alerts",
                "availability_90d",
            ],
        )

    common.emit(out, as_json, render)


def analytics_sla(
    csv: Annotated[Path, typer.Option("--csv", help="the event log", show_default=False)],
    fmt: FormatOpt = "servicenow",
    date_format: DateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """SLA of a helpdesk event log as recorded, offline: tickets rebuilt, open and
    closed; met / breached at closure by the log's own flag, in total and per priority;
    when each breach happened; hours to resolve."""
    from fleet_server.analytics.errors import AnalyticsInputError
    from fleet_server.analytics.servicenow import parse_log
    from fleet_server.analytics.support import sla_summary

    if fmt != "servicenow":
        _fail(f"--format {fmt}: only servicenow is known")
    try:
        with csv.open(encoding="utf-8-sig", newline="") as handle:
            summary = sla_summary(parse_log(handle, date_format=date_format))
    except OSError as exc:
        _fail(f"cannot read {csv}: {exc}")
    except AnalyticsInputError as exc:
        errors = getattr(exc, "errors", [])
        _fail(
            f"{csv}: {exc}" + "".join(f"\n  line {ln} [{col}]: {m}" for ln, col, m in errors[:50])
        )
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    s = summary
    typer.echo(
        f"{s['tickets']} ticket(s): {s['open']} open, {s['closed']} closed; "
        f"SLA met {s['met']}, breached {s['breached']}"
    )
    common.table(
        [{"priority": p, **v} for p, v in s["by_priority"].items()], ["priority", "met", "breached"]
    )
    h = s["hours_to_resolve"]
    typer.echo(f"hours to resolve: n={h['n']} median={h['median']} p90={h['p90']}")
    for b in s["breaches"]:
        typer.echo(f"  breach {b['number']} at {b['at']}")
