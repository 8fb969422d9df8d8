"""``fleet-server safety-key``: the Ed25519 key signing safe-mode commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

safety_app = typer.Typer(
    name="safety-key",
    help="The key that signs safe-mode commands of safety-critical recalls.",
    no_args_is_help=True,
    add_completion=False,
)


@safety_app.command("create")
def create(
    out: Annotated[Path, typer.Option("--out", help="directory for the key pair")],
) -> None:
    """Create safety-key.pem (private, mode 0600: set [recalls] safety_key to it) and
    safety-key.pub.pem (provision it on devices as [safety] public_key)."""
    from fleet_server.services.safe_mode import create_safety_key

    try:
        private, public = create_safety_key(out)
    except (FileExistsError, OSError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f'private key: {private}  (server: [recalls] safety_key = "{private}")')
    typer.echo(f'public key:  {public}  (devices: [safety] public_key = "<path>")')
