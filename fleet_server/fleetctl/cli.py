"""``fleetctl``: command line for ops staff, talking to the fleet server's REST API."""

from __future__ import annotations

import typer

from fleet_server import __version__
from fleet_server.fleetctl.analytics_cli import analytics_app
from protocol import SCHEMA_VERSION

app = typer.Typer(
    name="fleetctl",
    help="Operate an Edgefleet fleet: devices, alarms, bundles, rollouts, recalls, audit.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(analytics_app, name="analytics")


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands even while there is only one."""


@app.command()
def version() -> None:
    """Print the client and protocol versions."""
    typer.echo(f"fleetctl {__version__} (protocol {SCHEMA_VERSION})")


def main() -> None:
    """Entry point of the ``fleetctl`` console script."""
    app()
