"""``fleet-sim``: simulate devices for diagnosis, QA benches and demos."""

from __future__ import annotations

import typer

from simulator import __version__

app = typer.Typer(
    name="fleet-sim",
    help="Simulate Edgefleet devices: scenarios, fault replay and diagnosis, QA benches.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands even while there is only one."""


@app.command()
def version() -> None:
    """Print the simulator version."""
    typer.echo(f"fleet-sim {__version__}")


def main() -> None:
    """Entry point of the ``fleet-sim`` console script."""
    app()
