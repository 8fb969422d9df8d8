"""Options and error handling shared by ``fleet-server keys`` and ``fleet-server updates``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_server.updates.keys import KeyFileError
from fleet_server.updates.tuf_repository import PublishError, RepositoryStateError
from fleet_server.updates.tuf_signing import SigningError

RepoOpt = Annotated[
    Path,
    typer.Option(
        "--repo",
        envvar="FLEET_TUF_REPO",
        help="TUF repository directory (served as metadata/ and targets/)",
    ),
]
KeysOpt = Annotated[
    Path,
    typer.Option(
        "--keys",
        envvar="FLEET_TUF_KEYS",
        help="server directory of the online keys (targets, snapshot, timestamp); 0700",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]

USER_ERRORS = (
    KeyFileError,
    RepositoryStateError,
    SigningError,
    PublishError,
    ValueError,
    FileNotFoundError,
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors an operator can cause into one clear line and exit code 1."""
    try:
        yield
    except USER_ERRORS as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        human()
