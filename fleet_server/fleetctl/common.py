"""What every ``fleetctl`` command shares: the global options' state, the API client,
and output (tables for people, JSON for scripts).

The root app (:mod:`fleet_server.fleetctl.cli`) mounts the sub-CLIs; they all import
this module, never the root app, so the dependency goes one way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fleet_server.fleetctl.client import ApiClient, CtlError, load_config

# No markup: device ids like ``[gw-100]``, names and reasons are printed as written.
# Styling goes through ``rich.text.Text`` instead of ``[bold]`` tags in strings.
console = Console(markup=False, highlight=False)


def new_app(**kwargs: Any) -> typer.Typer:
    """A ``fleetctl`` (sub-)command group with plain help: typer's rich help pulls in a
    Markdown parser that alone costs more than the 0.4 s start-up budget."""
    return typer.Typer(rich_markup_mode=None, **kwargs)


JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
LimitOpt = Annotated[
    int | None, typer.Option("--limit", "-n", help="at most this many rows (default: all)")
]


@dataclass
class GlobalOptions:
    """``--url`` and ``--token`` as given to the root command (None = not given)."""

    url: str | None = None
    token: str | None = None


options = GlobalOptions()


def client() -> ApiClient:
    """An API client for the URL and token resolved from options, environment, file."""
    return ApiClient(load_config(options.url, options.token))


def when(value: Any) -> str:
    """A timestamp for people (``YYYY-mm-dd HH:MM:SS``), ``-`` when empty."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
    except ValueError:
        return str(value)


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    """Print ``rows`` as a table of ``columns`` (times and lists made readable)."""
    out = Table(title=title, show_lines=False)
    for index, col in enumerate(columns):
        # The first column identifies the row: never cut it; fold the others.
        out.add_column(col, no_wrap=index == 0, overflow="fold")
    for row in rows:
        cells = []
        for col in columns:
            value = row.get(col)
            if col.endswith(("_at", "last_seen")):
                value = when(value)
            elif isinstance(value, list):
                value = ",".join(map(str, value))
            cells.append("-" if value is None else str(value))
        out.add_row(*cells)
    console.print(out)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON for scripts, or through ``render`` for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def selector_args(items: list[str], option: str) -> dict[str, Any]:
    """``FIELD=VALUE`` pairs given to ``option`` into a registry selector (``tags=a,b`` and
    ``device_ids=a,b`` for lists, ``has_open_faults=true``, ``group=NAME`` for a saved
    group)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"{option} {item!r}: expected FIELD=VALUE (e.g. hw_revision=rev-b)")
        if key in ("tags", "device_ids"):
            out[key] = [t for t in value.split(",") if t]
        elif key == "has_open_faults":
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = value
    return out


# The names the rollout sub-CLI reaches these by (it was written against the root module).
_client = client
_emit = emit
_table = table
_when = when
