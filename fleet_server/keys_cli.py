"""``fleet-server keys``: TUF keys and repository lifecycle (root is kept offline).

Typical first setup (root keys on a medium kept offline, threshold 2 of 3)::

    fleet-server keys create-root --out /media/root-1 --count 3 --threshold 2
    fleet-server keys init-repo --repo /var/lib/edgefleet/tuf \
        --keys /etc/edgefleet/tuf-keys --root-keys /media/root-1

Root changes (rotation, re-signing before expiry) need a threshold of root keys: pass
every plugged-in root key directory with ``--root-keys`` (repeatable).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from securesystemslib.signer import Signer

from fleet_server.updates.cli_common import JsonOpt, KeysOpt, RepoOpt, emit, user_errors
from fleet_server.updates.keys import create_root_keys, load_root_keys
from fleet_server.updates.tuf_expiries import Expiries
from fleet_server.updates.tuf_repository import TufRepository
from fleet_server.updates.tuf_signing import ONLINE_ROLES

keys_app = typer.Typer(
    name="keys",
    help="Create root keys, initialise the TUF repository, rotate keys, re-sign root.",
    no_args_is_help=True,
    add_completion=False,
)

RootKeysOpt = Annotated[
    list[Path],
    typer.Option(
        "--root-keys",
        help="offline root key directory (from create-root); repeat for several",
    ),
]


def _root_signers(dirs: list[Path]) -> list[Signer]:
    signers: dict[str, Signer] = {}
    for directory in dirs:
        signers.update(load_root_keys(directory).signers)
    return list(signers.values())


@keys_app.command("create-root")
def create_root(
    out: Annotated[Path, typer.Option("--out", help="new directory to hold the root keys")],
    count: Annotated[int, typer.Option("--count", min=1, max=20, help="number of keys")] = 3,
    threshold: Annotated[
        int, typer.Option("--threshold", min=1, help="signatures needed to change root")
    ] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Generate offline root keys (Ed25519, PEM, mode 0600) into OUT. Keep OUT offline."""
    with user_errors():
        keyset = create_root_keys(out, count, threshold)
    ids = sorted(keyset.signers)

    def human() -> None:
        typer.echo(f"created {count} root keys in {out} (threshold {threshold}):")
        for kid in ids:
            typer.echo(f"  {kid}")
        typer.echo("Keep this directory offline; plug it in only to sign a new root.")

    emit(as_json, {"directory": str(out), "threshold": threshold, "keyids": ids}, human)


@keys_app.command("init-repo")
def init_repo(
    repo: RepoOpt,
    keys: KeysOpt,
    root_keys: RootKeysOpt,
    threshold: Annotated[
        int | None,
        typer.Option(help="root threshold (default: the one in root-keys.json)"),
    ] = None,
    root_days: Annotated[int, typer.Option(min=1, help="root validity, days")] = 365,
    targets_days: Annotated[int, typer.Option(min=1, help="targets validity, days")] = 90,
    snapshot_days: Annotated[int, typer.Option(min=1, help="snapshot validity, days")] = 7,
    timestamp_hours: Annotated[int, typer.Option(min=1, help="timestamp validity, hours")] = 24,
    as_json: JsonOpt = False,
) -> None:
    """Create the repository: root v1 signed by the offline keys, new online keys in KEYS."""
    with user_errors():
        if not root_keys:
            raise ValueError("give at least one --root-keys directory")
        info = load_root_keys(root_keys[0])
        expiries = Expiries(
            root=timedelta(days=root_days),
            targets=timedelta(days=targets_days),
            snapshot=timedelta(days=snapshot_days),
            timestamp=timedelta(hours=timestamp_hours),
            targets_margin=timedelta(days=targets_days) / 6,
            snapshot_margin=timedelta(days=snapshot_days) * 2 / 7,
            timestamp_margin=timedelta(hours=timestamp_hours) / 3,
        )
        created = TufRepository.create(
            repo, keys, _root_signers(root_keys), threshold or info.threshold, expiries
        )
        status = created.status()
    emit(as_json, status, lambda: typer.echo(f"initialised TUF repository in {repo}"))


@keys_app.command("rotate-online")
def rotate_online(
    role: Annotated[str, typer.Argument(help=f"one of: {', '.join(ONLINE_ROLES)}")],
    repo: RepoOpt,
    keys: KeysOpt,
    root_keys: RootKeysOpt,
) -> None:
    """Replace an online key: new root version signed by the root keys, old key deleted."""
    with user_errors():
        new = TufRepository(repo, keys).rotate_online_key(role, _root_signers(root_keys))
    typer.echo(f"{role} key is now {new}")


@keys_app.command("rotate-root")
def rotate_root(
    repo: RepoOpt,
    keys: KeysOpt,
    root_keys: RootKeysOpt,
    new_root_keys: Annotated[
        Path, typer.Option("--new-root-keys", help="directory from create-root with the new keys")
    ],
    threshold: Annotated[
        int | None, typer.Option(help="new threshold (default: the new directory's)")
    ] = None,
) -> None:
    """Replace the root keys. Needs a threshold of the current and of the new root keys."""
    with user_errors():
        new = load_root_keys(new_root_keys)
        signers = _root_signers(root_keys) + list(new.signers.values())
        version = TufRepository(repo, keys).rotate_root(
            [s.public_key for s in new.signers.values()], threshold or new.threshold, signers
        )
    typer.echo(f"root v{version} published with {len(new.signers)} new root keys")


@keys_app.command("resign-root")
def resign_root(repo: RepoOpt, keys: KeysOpt, root_keys: RootKeysOpt) -> None:
    """Publish a new root version with the same keys and a fresh expiry date."""
    with user_errors():
        version = TufRepository(repo, keys).resign_root(_root_signers(root_keys))
    typer.echo(f"root v{version} published")


@keys_app.command("status")
def status(repo: RepoOpt, keys: KeysOpt, as_json: JsonOpt = False) -> None:
    """Show each role's version, expiry, keys and threshold."""
    with user_errors():
        data = TufRepository(repo, keys).status()

    def human() -> None:
        roles = data["roles"]
        assert isinstance(roles, dict)
        for name, role in roles.items():
            typer.echo(
                f"{name:<10} v{role['version']:<5} expires {role['expires']}  "
                f"{role['threshold']} of {len(role['keyids'])} keys"
            )
        typer.echo(f"{data['targets']} targets published")

    emit(as_json, data, human)
