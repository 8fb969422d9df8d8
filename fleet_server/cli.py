"""``fleet-server``: run and administer the fleet server."""

from __future__ import annotations

import typer

from fleet_server import __version__
from fleet_server.identity.cli import ca_app
from fleet_server.keys_cli import keys_app
from fleet_server.updates.publish_cli import updates_app
from protocol import SCHEMA_VERSION

app = typer.Typer(
    name="fleet-server",
    help="Edgefleet fleet server: device registry, telemetry ingest, updates and rollouts.",
    no_args_is_help=True,
    add_completion=False,
)


app.add_typer(keys_app, name="keys")
app.add_typer(updates_app, name="updates")
app.add_typer(ca_app, name="ca")


@app.callback()
def _root() -> None:
    """Keep sub-commands as sub-commands even while there is only one."""


@app.command()
def version() -> None:
    """Print the server and protocol versions."""
    typer.echo(f"fleet-server {__version__} (protocol {SCHEMA_VERSION})")


def main() -> None:
    """Entry point of the ``fleet-server`` console script."""
    app()
