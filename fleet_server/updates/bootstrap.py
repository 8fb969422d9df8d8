"""First-run setup of the server's TUF repository (``fleet-server init``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Signer

from fleet_server.updates.keys import create_root_keys, load_root_keys
from fleet_server.updates.tuf_repository import TufRepository

DEV_ROOT_DIR = "tuf-dev-root"


@dataclass(frozen=True)
class RepoSetup:
    """What :func:`ensure_repository` did: ``existing``, ``created`` or ``created-dev``."""

    outcome: str
    repo_dir: Path
    dev_root_dir: Path | None = None


class DevRootRefusedError(Exception):
    """Production asked for a repository without offline root keys."""


def ensure_repository(
    repo_dir: Path,
    keys_dir: Path,
    root_key_dirs: list[Path] | None = None,
    *,
    allow_dev_root: bool = True,
) -> RepoSetup:
    """Leave an existing repository alone; else create one signed by the offline root keys
    in ``root_key_dirs`` (threshold from the first directory's ``root-keys.json``), or,
    without them, by a *development* root: one key, threshold 1, written next to the
    online keys (``<keys_dir>/../tuf-dev-root``). That root is not fit for production:
    the key that can re-sign everything lives on the server, so with ``allow_dev_root``
    false (production) :class:`DevRootRefusedError` is raised instead and nothing is written.

    Raises the repository's and key store's errors (KeyFileError, SigningError, ...).
    """
    repo_dir, keys_dir = Path(repo_dir), Path(keys_dir)
    if (repo_dir / "metadata" / "root.json").is_file():
        return RepoSetup("existing", repo_dir)
    if root_key_dirs:
        signers: dict[str, Signer] = {}
        for directory in root_key_dirs:
            signers.update(load_root_keys(directory).signers)
        threshold = load_root_keys(root_key_dirs[0]).threshold
        TufRepository.create(repo_dir, keys_dir, list(signers.values()), threshold)
        return RepoSetup("created", repo_dir)
    if not allow_dev_root:
        raise DevRootRefusedError(
            f"no TUF repository in {repo_dir} and no --root-keys: production will not create "
            "a development root (one key, stored online). Create offline root keys with "
            "fleet-server keys create-root --out <offline dir> --count 3 --threshold 2, then "
            "run fleet-server init --root-keys <offline dir>"
        )
    dev_dir = keys_dir.parent / DEV_ROOT_DIR
    keyset = create_root_keys(dev_dir, count=1, threshold=1)
    TufRepository.create(repo_dir, keys_dir, list(keyset.signers.values()), 1)
    return RepoSetup("created-dev", repo_dir, dev_dir)
