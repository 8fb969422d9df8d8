"""``fleet-sim replay``: recorded columns of a CSV file through the agent's fault engine.

For technicians and QA: one column (``--signal`` maps it to a sample field, else it is a
generic gauge) feeds the adaptive rule; several columns feed the multivariate rule
(``--rule`` chooses; every built-in rule runs too, as on a device). Prints each raise and
clear with the input's timestamp, ISO 8601 UTC, the score and the signals that drove it,
or one JSON object per line with ``--json``. A bad file ends with one error line naming
the file, line and column, and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

err = Console(stderr=True)
out = Console()


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]fleet-sim:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(2)


def replay_command(
    csv_file: Annotated[Path, typer.Option("--csv", help="recorded signals (CSV with a header)")],
    time_col: Annotated[str, typer.Option(help="column with the timestamps")],
    value_col: Annotated[
        list[str],
        typer.Option(help="column with values (repeat for several: multivariate rule)"),
    ],
    signal: Annotated[
        list[str] | None,
        typer.Option(
            help="sample field or name each value column maps to (temp_c, fan_rpm...; "
            "repeat once per --value-col)"
        ),
    ] = None,
    rule: Annotated[
        str | None,
        typer.Option(
            help="adaptive | multivariate | all (default: adaptive for one column, "
            "multivariate for several)"
        ),
    ] = None,
    delimiter: Annotated[
        str | None, typer.Option(help="field separator (default: guessed from , ; or tab)")
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="skip unreadable rows instead of failing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per alarm")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="agent configuration (TOML) whose faults table the replay runs, as on the "
            "device: built-in overrides, faults.adaptive and faults.multivariate rules",
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="name=value: a parameter of the adaptive or multivariate rule the replay adds, "
            "not of configured ones; adaptive.NAME or multivariate.NAME for one rule only "
            "(e.g. --set raise_threshold=6 --set severity=minor; repeat for several)",
        ),
    ] = None,
) -> None:
    """Run recorded signals through the agent's fault engine, as a device would.

    Every built-in rule, plus an adaptive rule on each signal and/or a multivariate rule
    over all of them (--rule). Prints each raise and clear with the input's timestamp and
    ISO 8601 UTC, its score and the signals that drove it. Timestamps: ISO 8601 (without
    an offset: UTC) or unix seconds. Empty or NaN values are gaps. With --config the
    device's own fault rules run (the replay adds a rule only where they have none);
    --set tunes the rules the replay adds.
    """
    from simulator.replay import ReplayError, read_table_csv
    from simulator.replay_rules import (
        default_rule,
        parse_settings,
        read_faults,
        replay_table,
        table_engine,
    )

    try:
        tuned = parse_settings(settings or [])
        faults = read_faults(config) if config is not None else None
    except ValueError as exc:
        raise _fail(str(exc)) from None

    names = list(signal or value_col)
    if len(names) != len(value_col):
        raise _fail(f"--signal: give one per --value-col ({len(value_col)}), not {len(names)}")
    if delimiter is not None and len(delimiter) != 1:
        raise _fail(f"--delimiter: expected one character, got {delimiter!r}")
    try:
        table = read_table_csv(
            csv_file,
            time_col=time_col,
            value_cols=value_col,
            signals=names,
            skip_bad=skip_bad,
            delimiter=delimiter,
        )
    except ReplayError as exc:
        raise _fail(exc.one_line()) from None
    if table.skipped:
        err.print(f"skipped {len(table.skipped)} bad row(s); first: {table.skipped[0]}")
    if table.reordered:
        err.print("rows were not in time order; replayed sorted by time")
    try:
        rules = table_engine(table.signals, rule or default_rule(table.signals), faults, tuned)
        alarms = replay_table(table, rules.engine)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if config is not None or tuned:
        for note in rules.notes:  # which rules ran: the device's, or the replay's own
            err.print(note, highlight=False, markup=False, soft_wrap=True)
    if as_json:
        for alarm in alarms:
            typer.echo(json.dumps(alarm.as_dict()))
        return
    what = ", ".join(table.signals)
    view = Table(title=f"{csv_file.name}: {len(table.rows)} samples of {what}")
    for col in ("time", "ISO 8601 (UTC)", "event", "code", "severity", "value", "drivers"):
        view.add_column(col, no_wrap=True)
    view.add_column("message")
    for a in alarms:
        view.add_row(
            a.time_text,
            a.iso,
            a.event,
            a.code,
            a.severity,
            "" if a.value is None else f"{a.value:.6g}",
            ", ".join(f"{name} {share:.0%}" for name, share in a.drivers),
            a.message,
        )
    out.print(view)
    out.print(
        f"{sum(a.event == 'raised' for a in alarms)} raised, "
        f"{sum(a.event == 'cleared' for a in alarms)} cleared"
    )
