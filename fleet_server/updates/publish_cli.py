"""``fleet-server updates``: publish bundles to the TUF repository and keep it fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleet_server.updates.cli_common import JsonOpt, KeysOpt, RepoOpt, emit, user_errors
from fleet_server.updates.tuf_repository import PublishedTarget, TufRepository

updates_app = typer.Typer(
    name="updates",
    help="Publish, list and unpublish bundles; re-sign metadata before it expires.",
    no_args_is_help=True,
    add_completion=False,
)


def _target_dict(t: PublishedTarget) -> dict[str, object]:
    return {
        "name": t.name,
        "length": t.length,
        "sha256": t.sha256,
        "path": f"targets/{t.file_path}",
        "version": t.meta.version,
        "model": t.meta.model,
        "hardware_revisions": t.meta.hardware_revisions,
        "release_counter": t.meta.release_counter,
        "channel": t.meta.channel,
        "min_agent_version": t.meta.min_agent_version,
    }


@updates_app.command()
def publish(
    bundle: Annotated[Path, typer.Argument(help="bundle file built by fleet-bundle")],
    repo: RepoOpt,
    keys: KeysOpt,
    channel: Annotated[
        str | None, typer.Option(help="channel (default: the manifest's, else production)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify BUNDLE and publish it as a signed TUF target."""
    with user_errors():
        target = TufRepository(repo, keys).publish(bundle, channel)
    emit(
        as_json,
        _target_dict(target),
        lambda: typer.echo(
            f"published {target.name} ({target.meta.version}, release "
            f"{target.meta.release_counter}) on {target.meta.channel}"
        ),
    )


@updates_app.command("list")
def list_targets(repo: RepoOpt, keys: KeysOpt, as_json: JsonOpt = False) -> None:
    """List the published bundles."""
    with user_errors():
        targets = TufRepository(repo, keys).list_targets()

    def human() -> None:
        if not targets:
            typer.echo("no bundles published")
        for t in targets:
            typer.echo(
                f"{t.meta.version:<12} r{t.meta.release_counter:<4} {t.meta.channel:<12} "
                f"{','.join(t.meta.hardware_revisions):<16} {t.name}"
            )

    emit(as_json, [_target_dict(t) for t in targets], human)


@updates_app.command()
def unpublish(
    name: Annotated[str, typer.Argument(help="target name, as `list` shows it")],
    repo: RepoOpt,
    keys: KeysOpt,
) -> None:
    """Remove a bundle from the signed targets (devices stop seeing it)."""
    with user_errors():
        removed = TufRepository(repo, keys).unpublish(name)
    if not removed:
        typer.echo(f"error: {name} is not published", err=True)
        raise typer.Exit(1)
    typer.echo(f"unpublished {name}")


@updates_app.command()
def refresh(repo: RepoOpt, keys: KeysOpt, as_json: JsonOpt = False) -> None:
    """Re-sign targets, snapshot and timestamp that are close to expiry (cron-safe)."""
    with user_errors():
        result = TufRepository(repo, keys).refresh_expiring()
    data = {
        "resigned": result.resigned,
        "root_expires": result.root_expires,
        "root_needs_resigning": result.root_needs_resigning,
    }

    def human() -> None:
        typer.echo(f"re-signed: {', '.join(result.resigned) or 'nothing due'}")
        if result.root_needs_resigning:
            typer.echo(
                f"warning: root expires {result.root_expires}; run `fleet-server keys "
                "resign-root` with the offline root keys",
                err=True,
            )

    emit(as_json, data, human)
