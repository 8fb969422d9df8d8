"""A ready TUF repository for tests: offline 2-of-3 root keys, online keys, example bundles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner

from firmware_bundles.build import BuiltBundle
from firmware_bundles.examples import build_examples
from fleet_server.updates.keys import RootKeySet, create_root_keys
from fleet_server.updates.tuf_repository import Clock, TufRepository, root_bytes, utc_now


@dataclass
class World:
    """Everything a TUF test needs, in one temp directory."""

    tmp: Path
    root_keys: RootKeySet
    repo: TufRepository
    bundles: dict[str, BuiltBundle]

    @property
    def repo_dir(self) -> Path:
        """The directory a mirror serves."""
        return self.repo.path

    @property
    def root(self) -> bytes:
        """The current root.json (a new device's initial trust)."""
        return root_bytes(self.repo.path)

    def root_signers(self, count: int = 2) -> list[CryptoSigner]:
        """``count`` of the offline root signers."""
        return list(self.root_keys.signers.values())[:count]


def make_world(tmp: Path, clock: Clock = utc_now, examples: tuple[str, ...] | None = None) -> World:
    """Root keys (3, threshold 2) in ``tmp/offline-root``, repository in ``tmp/repo``,
    online keys in ``tmp/server-keys``, example bundles built into ``tmp/bundles``."""
    root_keys = create_root_keys(tmp / "offline-root", count=3, threshold=2)
    repo = TufRepository.create(
        tmp / "repo",
        tmp / "server-keys",
        list(root_keys.signers.values())[:2],
        threshold=2,
        clock=clock,
    )
    names = examples or ("good-1.1.0", "good-1.2.0")
    return World(tmp, root_keys, repo, build_examples(tmp / "bundles", names))
