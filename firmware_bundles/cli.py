"""``fleet-bundle``: build, inspect and verify update bundles."""

from __future__ import annotations

import typer

from firmware_bundles import __version__

app = typer.Typer(
    name="fleet-bundle",
    help="Build, inspect and verify Edgefleet update bundles.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands even while there is only one."""


@app.command()
def version() -> None:
    """Print the bundle tool version."""
    typer.echo(f"fleet-bundle {__version__}")


def main() -> None:
    """Entry point of the ``fleet-bundle`` console script."""
    app()
