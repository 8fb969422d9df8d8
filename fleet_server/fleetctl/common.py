"""What every ``fleetctl`` command shares: the global options' state, the API client,
and output (tables for people, JSON for scripts).

The root app (:mod:`fleet_server.fleetctl.cli`) mounts the sub-CLIs; they all import
this module, never the root app, so the dependency goes one way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleet_server.fleetctl.client import ApiClient, CtlError, load_config

if TYPE_CHECKING:  # rich is imported when something is drawn: `--help` stays fast
    from rich.console import Console


def get_console() -> Console:
    """The one output console, made on first use (importing rich costs start-up time
    that ``--help`` and ``--json`` never need) and kept as ``common.console`` (which a
    test may replace). No markup: device ids like ``[gw-100]``, names and reasons are
    printed as written; styling goes through ``rich.text.Text``."""
    made = globals().get("console")
    if made is None:
        from rich.console import Console

        made = globals()["console"] = Console(markup=False, highlight=False)
    return made  # type: ignore[no-any-return]


def __getattr__(name: str) -> Any:
    """``common.console`` for the sub-CLIs: :func:`get_console`, made on first use."""
    if name == "console":
        return get_console()
    raise AttributeError(name)


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
    """Root options as given (None = not given): ``--url``, ``--token``, ``-o wide``
    (every column, no folding) and ``--columns a,b`` (exactly these columns)."""

    url: str | None = None
    token: str | None = None
    output: str | None = None
    columns: list[str] | None = None


options = GlobalOptions()


def client() -> ApiClient:
    """An API client for the URL and token resolved from options, environment, file."""
    return ApiClient(load_config(options.url, options.token))


TIME_FORMAT = "%Y-%m-%d %H:%M:%SZ"
"""The one time format of every table: UTC, to the second (ISO 8601 with a space)."""


def when(value: Any) -> str:
    """A timestamp for people in :data:`TIME_FORMAT` (UTC), from an ISO 8601 string or
    epoch seconds (the API gives both); ``-`` when empty."""
    if value is None or value == "":
        return "-"
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(float(value), UTC)
        else:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime(TIME_FORMAT)
    except (ValueError, OverflowError, OSError):
        return str(value)


def is_time_column(name: str) -> bool:
    """Columns that hold a timestamp (shown in :data:`TIME_FORMAT`)."""
    return name.endswith(("_at", "last_seen", "_ts")) or name in ("at", "ts", "since")


def _cell(col: str, value: Any) -> str:
    if is_time_column(col):
        return when(value)
    if isinstance(value, list):
        return ",".join(map(str, value))
    return "-" if value is None else str(value)


FOLD_WIDTH = 20
"""A column wider than this is folded onto several lines rather than left out."""


def fit_columns(cells: list[list[str]], columns: list[str], width: int) -> list[int]:
    """Indexes of the columns to show in ``width`` characters: the first (it names the
    row) always, then the others in order while they fit. A column costs its widest cell
    (at most :data:`FOLD_WIDTH`: longer text is folded onto several lines, not dropped)
    plus 3 for padding and border."""
    chosen: list[int] = []
    used = 1
    for index, col in enumerate(columns):
        natural = min(max([len(col), *(len(row[index]) for row in cells)]), FOLD_WIDTH) + 3
        if index == 0 or used + natural <= width:
            chosen.append(index)
            used += natural
    return chosen


def table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    """Print ``rows`` as a table of ``columns`` that fits the terminal: the columns that
    fit are shown, and a note names the others. ``-o wide`` shows every column at full
    width; ``--columns a,b`` shows exactly those (any field of the rows)."""
    from rich.table import Table
    from rich.text import Text

    console = get_console()
    if options.columns:
        columns = options.columns
    cells = [[_cell(col, row.get(col)) for col in columns] for row in rows]
    wide = options.output == "wide" or bool(options.columns)
    shown = list(range(len(columns)))
    if not wide:
        shown = fit_columns(cells, columns, console.width)
    out = Table(title=title, show_lines=False)
    for index in shown:
        # The first column identifies the row: never cut it; fold the others.
        out.add_column(columns[index], no_wrap=index == 0 or wide, overflow="fold")
    for row_cells in cells:
        out.add_row(*(Text(row_cells[index]) for index in shown))
    if wide:
        needed = sum(max([len(c), *(len(r[i]) for r in cells)]) + 3 for i, c in enumerate(columns))
        # Wider than the terminal on purpose: lines run on (pipe to `less -S`) uncut.
        saved_width = console.width
        console.width = max(saved_width, needed + 1)
        try:
            console.print(out)
        finally:
            console.width = saved_width
    else:
        console.print(out)
    hidden = [columns[i] for i in range(len(columns)) if i not in shown]
    if hidden:
        console.print(
            f"({len(hidden)} more column(s): {', '.join(hidden)}; use -o wide or --columns)",
            style="dim",
        )


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    """Print ``data`` as JSON for scripts, or through ``render`` for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        render(data)


def emit_page(
    envelope: dict[str, Any], as_json: bool, render: Callable[[list[dict[str, Any]]], None]
) -> None:
    """Print a list answer: ``--json`` gives the API's own envelope (``items``,
    ``next_cursor``, ``total``), people get ``render(items)``."""
    emit(envelope, as_json, lambda body: render(body["items"]))


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
