"""The server's TUF repository: a directory of signed metadata and bundle targets.

Built on python-tuf's ``tuf.repository.Repository`` (which provides ``edit()``,
``do_snapshot()`` and ``do_timestamp()``) and ``tuf.api.metadata``. The directory is
both the server's storage and a servable mirror:

```
REPO/
  edgefleet-repo.json        expiry settings (not served)
  audit.jsonl                one JSON line per change: time, OS user, action (not served)
  metadata/                  served as <base>/metadata/
    root.json, N.root.json   every root version (clients walk the chain)
    timestamp.json
    N.snapshot.json          consistent snapshots: every version stays
    N.targets.json
  targets/                   served as <base>/targets/
    <sha256>.<target name>   consistent-snapshot target names
```

Writes are atomic (temp file, fsync, rename) and ordered: target files, then targets
metadata, then snapshot, and ``timestamp.json`` last. A mirror serving the directory while
it changes therefore never offers a timestamp that points at a snapshot not yet written.
Mutations hold an exclusive file lock, so several server processes can share the directory.

Keys: targets, snapshot and timestamp are *online* keys read from the server's key
directory (``<keyid>.pem``); root keys stay offline and are passed in (as signers) only
for the operations that change root.
Signing and the key operations are in :mod:`fleet_server.updates.tuf_signing`, the
roles' validity periods in :mod:`fleet_server.updates.tuf_expiries`.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Key,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.repository import Repository

from firmware_bundles.errors import BundleError
from firmware_bundles.files import sha256_file
from firmware_bundles.files import write_public_file as _write_atomic
from firmware_bundles.manifest import ManifestError
from firmware_bundles.target_meta import TargetMeta, parse_target_custom, target_meta_for
from firmware_bundles.verify import verify_bundle
from fleet_server.updates import tuf_signing as signing
from fleet_server.updates.keys import new_signer, write_key
from fleet_server.updates.tuf_expiries import Expiries
from fleet_server.updates.tuf_signing import ONLINE_ROLES, SigningError

Clock = Callable[[], datetime]
CONFIG_NAME = "edgefleet-repo.json"
AUDIT_NAME = "audit.jsonl"


def utc_now() -> datetime:
    """The current time, UTC, whole seconds (TUF expiry precision)."""
    return datetime.now(UTC).replace(microsecond=0)


class RepositoryStateError(Exception):
    """The repository is missing, already initialised, or its files are inconsistent."""


class PublishError(Exception):
    """A bundle cannot be published (invalid bundle, or a conflicting earlier publish)."""


@dataclass(frozen=True)
class PublishedTarget:
    """One bundle published in the repository."""

    name: str
    length: int
    sha256: str
    meta: TargetMeta

    @property
    def file_path(self) -> str:
        """Path of the file under ``targets/`` (consistent snapshot name)."""
        return f"{self.sha256}.{self.name}"


@dataclass
class RefreshResult:
    """What ``refresh_expiring`` did: roles re-signed, and whether root needs its keys."""

    resigned: list[str] = field(default_factory=list)
    root_expires: datetime | None = None
    root_needs_resigning: bool = False


class TufRepository(Repository):
    """A TUF repository in a directory, signed with online keys from ``keys_dir``.

    Create one with ``TufRepository.create(...)`` (first time) or ``TufRepository(...)``
    (existing directory). ``clock`` gives the time used for expiry dates; tests inject it.
    """

    def __init__(self, path: Path, keys_dir: Path, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.keys_dir = Path(keys_dir)
        self._clock = clock
        self._current: dict[str, Metadata] = {}
        self._root_signers: list[Signer] = []
        self._previous_root: Root | None = None
        self._now_override: datetime | None = None
        config_path = self.path / CONFIG_NAME
        if not (self.metadata_dir / "root.json").is_file() or not config_path.is_file():
            raise RepositoryStateError(
                f"{self.path} is not an initialised TUF repository "
                "(run: fleet-server keys init-repo)"
            )
        try:
            config = json.loads(config_path.read_text())
            self.expiries = Expiries.from_json(config.get("expiries", {}))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise RepositoryStateError(f"{config_path} is unreadable or invalid: {exc}") from None
        self._load()

    # -- creation -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        keys_dir: Path,
        root_signers: Sequence[Signer],
        threshold: int,
        expiries: Expiries | None = None,
        clock: Clock = utc_now,
    ) -> TufRepository:
        """Initialise a repository: root v1 signed by the offline root keys, and fresh
        online keys (written to ``keys_dir``) for targets, snapshot and timestamp.

        Raises:
            RepositoryStateError: ``path`` already holds a repository.
            SigningError: fewer than ``threshold`` root signers.
            ValueError: bad threshold or expiries.
        """
        path = Path(path)
        expiries = expiries or Expiries()
        expiries.check()
        if (path / "metadata" / "root.json").exists():
            raise RepositoryStateError(f"{path} already holds a TUF repository")
        if not 1 <= threshold <= len(root_signers):
            raise SigningError(
                f"root threshold {threshold} needs at least {threshold} root keys "
                f"(got {len(root_signers)})"
            )
        now = clock().replace(microsecond=0)
        root = Root(expires=now + expiries.root, consistent_snapshot=True)
        for signer in root_signers:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = threshold
        online = {role: new_signer() for role in ONLINE_ROLES}
        for role, signer in online.items():
            root.add_key(signer.public_key, role)
        root_md = Metadata(root)
        for signer in root_signers:
            root_md.sign(signer, append=True)
        root.verify_delegate(Root.type, root_md.signed_bytes, root_md.signatures)
        # signed: now write the online keys and the files
        for signer in online.values():
            write_key(Path(keys_dir), signer)
        (path / "metadata").mkdir(parents=True, exist_ok=True)
        (path / "targets").mkdir(exist_ok=True)
        _write_atomic(
            path / CONFIG_NAME,
            json.dumps({"expiries": expiries.to_json()}, indent=2).encode() + b"\n",
        )
        cls._write_root(path / "metadata", root_md)

        repo = cls(path, keys_dir, clock)
        targets_md = Metadata(Targets(expires=now + expiries.targets))
        repo._sign_online(targets_md)
        repo._store(targets_md)
        snapshot_md = Metadata(Snapshot(expires=now + expiries.snapshot))
        snapshot_md.signed.meta = {"targets.json": repo.targets_infos["targets.json"]}
        repo._sign_online(snapshot_md)
        repo._store(snapshot_md)
        timestamp_md = Metadata(Timestamp(expires=now + expiries.timestamp))
        timestamp_md.signed.snapshot_meta = repo.snapshot_info
        repo._sign_online(timestamp_md)
        repo._store(timestamp_md)
        repo._audit("init", root_keyids=sorted(root.roles[Root.type].keyids), threshold=threshold)
        return repo

    # -- storage ----------------------------------------------------------------------

    @staticmethod
    def _write_root(metadata_dir: Path, md: Metadata) -> None:
        data = md.to_bytes()
        _write_atomic(metadata_dir / f"{md.signed.version}.root.json", data)
        _write_atomic(metadata_dir / "root.json", data)

    def _filename(self, role: str, version: int) -> Path:
        if role == Timestamp.type:
            return self.metadata_dir / "timestamp.json"
        return self.metadata_dir / f"{version}.{role}.json"

    def _store(self, md: Metadata) -> None:
        role = md.signed.type
        if role == Root.type:
            self._write_root(self.metadata_dir, md)
        else:
            _write_atomic(self._filename(role, md.signed.version), md.to_bytes())
        self._current[role] = md

    def _read(self, name: str) -> Metadata:
        path = self.metadata_dir / name
        try:
            return Metadata.from_file(str(path))
        except Exception as exc:
            raise RepositoryStateError(f"cannot read {path}: {exc}") from None

    def _load(self) -> None:
        """Read the current metadata by following root -> timestamp -> snapshot -> targets."""
        self._current = {Root.type: self._read("root.json")}
        if not (self.metadata_dir / "timestamp.json").exists():
            return  # only during create()
        timestamp = self._read("timestamp.json")
        self._current[Timestamp.type] = timestamp
        snap_version = timestamp.signed.snapshot_meta.version  # type: ignore[attr-defined]
        snapshot = self._read(f"{snap_version}.snapshot.json")
        self._current[Snapshot.type] = snapshot
        targets_version = snapshot.signed.meta["targets.json"].version  # type: ignore[attr-defined]
        self._current[Targets.type] = self._read(f"{targets_version}.targets.json")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the repository's exclusive lock and work on fresh state from disk."""
        with (self.path / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._load()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _audit(self, action: str, **details: object) -> None:
        """Append one line to ``audit.jsonl``: who changed what, when (under the lock)."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid:{os.getuid()}"
        line = {"ts": self._now().isoformat(), "user": user, "action": action, **details}
        with (self.path / AUDIT_NAME).open("a") as fh:
            fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")

    # -- Repository interface ------------------------------------------------------------

    def open(self, role: str) -> Metadata:
        """A copy of ``role``'s current metadata (python-tuf ``Repository`` interface)."""
        if role not in self._current:
            raise RepositoryStateError(f"no {role} metadata in {self.metadata_dir}")
        return deepcopy(self._current[role])

    def close(self, role: str, md: Metadata) -> None:
        """Bump version and expiry, sign, and store ``md`` (``Repository`` interface).

        Root is signed with the root signers handed to the current operation and must
        meet the threshold of both the previous root and itself.
        """
        md.signed.version += 1
        md.signed.expires = self._now() + self.expiries.for_role(role)
        if role == Root.type:
            self._sign_root(md)
        else:
            self._sign_online(md)
        self._store(md)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        """Version, length and sha256 of the current targets metadata (for snapshot)."""
        md = self._current[Targets.type]
        data = self._filename(Targets.type, md.signed.version).read_bytes()
        return {"targets.json": MetaFile.from_data(md.signed.version, data, ["sha256"])}

    @property
    def snapshot_info(self) -> MetaFile:
        """Version, length and sha256 of the current snapshot metadata (for timestamp)."""
        md = self._current[Snapshot.type]
        data = self._filename(Snapshot.type, md.signed.version).read_bytes()
        return MetaFile.from_data(md.signed.version, data, ["sha256"])

    # -- signing ------------------------------------------------------------------------

    def _now(self) -> datetime:
        return (self._now_override or self._clock()).replace(microsecond=0)

    def _root(self) -> Root:
        root = self._current[Root.type].signed
        assert isinstance(root, Root)
        return root

    def _sign_online(self, md: Metadata) -> None:
        signing.sign_online(md, self._root(), self.keys_dir)

    def _sign_root(self, md: Metadata) -> None:
        signing.sign_root(md, self._root_signers, self._previous_root or self._root())

    @contextmanager
    def _root_change(self, signers: Iterable[Signer]) -> Iterator[Root]:
        """Edit root; the new version is signed by ``signers`` and checked against both
        the current root's and its own threshold before anything is written."""
        self._root_signers = list(signers)
        self._previous_root = deepcopy(self._root())
        try:
            with self.edit_root() as root:
                yield root
        finally:
            self._root_signers = []
            self._previous_root = None

    # -- operations -----------------------------------------------------------------------

    def publish(self, bundle_path: Path, channel: str | None = None) -> PublishedTarget:
        """Verify a bundle, copy it to ``targets/`` and add it as a signed target.

        The target name is the bundle's canonical file name; its custom metadata carries
        version, hardware revisions, release counter, channel and minimum agent version.
        Publishing the same bytes again only changes the channel (if different);
        publishing different bytes under the same name is refused.

        Raises:
            PublishError: the bundle is invalid, or its name is taken by other bytes.
        """
        try:
            manifest = verify_bundle(Path(bundle_path))
        except BundleError as exc:
            raise PublishError(f"bundle refused: {exc}") from None
        chosen = channel or manifest.channel or "production"
        try:
            meta = target_meta_for(manifest, chosen)
        except ManifestError as exc:
            raise PublishError(f"cannot publish on channel {chosen!r}: {exc}") from None
        name = manifest.bundle_filename()
        sha256, length = sha256_file(Path(bundle_path))
        with self._locked():
            existing = self._current_targets().targets.get(name)
            if existing is not None and existing.hashes.get("sha256") != sha256:
                raise PublishError(
                    f"{name} is already published with different content; "
                    "publish a new release (raise release_counter) instead"
                )
            stored = self.targets_dir / f"{sha256}.{name}"
            if not stored.exists():
                fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.targets_dir)
                os.close(fd)
                try:
                    shutil.copyfile(bundle_path, tmp)
                    if sha256_file(Path(tmp)) != (sha256, length):
                        raise PublishError(f"{bundle_path} changed while it was published")
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, stored)
                finally:
                    Path(tmp).unlink(missing_ok=True)
            target = TargetFile(length, {"sha256": sha256}, name, {"custom": meta.to_custom()})
            if existing is None or existing.to_dict() != target.to_dict():
                with self.edit_targets() as targets:
                    targets.targets[name] = target
                self._snapshot_and_timestamp()
                self._audit("publish", target=name, sha256=sha256, channel=chosen)
        return PublishedTarget(name, length, sha256, meta)

    def unpublish(self, name: str) -> bool:
        """Remove target ``name`` from the signed targets (a blocked release).

        The file stays under ``targets/`` (older snapshots may still name it); devices
        stop seeing the target at their next refresh. Returns False if it was not there.
        """
        with self._locked():
            if name not in self._current_targets().targets:
                return False
            with self.edit_targets() as targets:
                del targets.targets[name]
            self._snapshot_and_timestamp()
            self._audit("unpublish", target=name)
        return True

    def list_targets(self) -> list[PublishedTarget]:
        """Every published bundle, sorted by name."""
        with self._locked():
            targets = self._current_targets()
        result = []
        for name, info in sorted(targets.targets.items()):
            try:
                meta = parse_target_custom(info.custom)
            except ManifestError:
                continue  # not an Edgefleet bundle
            result.append(PublishedTarget(name, info.length, info.hashes["sha256"], meta))
        return result

    def refresh_expiring(self, now: datetime | None = None) -> RefreshResult:
        """Re-sign targets, snapshot and timestamp that expire within their margin.

        The server's scheduler calls this every few minutes (it is cheap when nothing
        is due). A re-signed targets forces a new snapshot, a new snapshot a new
        timestamp. New expiry dates count from ``now`` (default: the repository clock).
        Root is signed offline: it is only reported when close to expiry.
        """
        result = RefreshResult()
        with self._locked():
            now = (now or self._now()).replace(microsecond=0)

            def due(role: str) -> bool:
                return self._current[role].signed.expires - self.expiries.margin(role) <= now

            self._now_override = now
            try:
                if due(Targets.type):
                    with self.edit_targets():
                        pass
                    result.resigned.append(Targets.type)
                if result.resigned or due(Snapshot.type):
                    self.do_snapshot(force=True)
                    result.resigned.append(Snapshot.type)
                if result.resigned or due(Timestamp.type):
                    self.do_timestamp(force=True)
                    result.resigned.append(Timestamp.type)
            finally:
                self._now_override = None
            if result.resigned:
                self._audit("refresh", resigned=result.resigned)
            result.root_expires = self._root().expires
            result.root_needs_resigning = due(Root.type)
        return result

    def rotate_online_key(self, role: str, root_signers: Sequence[Signer]) -> str:
        """Replace ``role``'s online key: new key in ``keys_dir``, new root signed by the
        root keys, then ``role`` (and what depends on it) re-signed with the new key.
        The old private key file is deleted. Returns the new key id.

        Raises:
            ValueError: ``role`` is not targets, snapshot or timestamp.
            SigningError: the root signers do not meet the root threshold.
        """
        return signing.rotate_online_key(self, role, root_signers)

    def rotate_root(
        self,
        new_root_keys: Sequence[Key],
        threshold: int,
        signers: Sequence[Signer],
    ) -> int:
        """Replace the root keys with ``new_root_keys`` and ``threshold``.

        ``signers`` must include a threshold of the *current* root keys and a threshold
        of the *new* ones (a stock TUF client checks both). Returns the new root version.

        Raises:
            SigningError: a threshold is not met; nothing is written.
            ValueError: bad threshold.
        """
        if not 1 <= threshold <= len(new_root_keys):
            raise ValueError(f"threshold must be between 1 and {len(new_root_keys)}")
        return signing.rotate_root(self, new_root_keys, threshold, signers)

    def resign_root(self, signers: Sequence[Signer]) -> int:
        """Publish a new root version with the same keys and a fresh expiry date.

        Raises:
            SigningError: the root threshold is not met; nothing is written.
        """
        return signing.resign_root(self, signers)

    def _snapshot_and_timestamp(self) -> None:
        self.do_snapshot()
        self.do_timestamp()

    def _current_targets(self) -> Targets:
        targets = self._current[Targets.type].signed
        assert isinstance(targets, Targets)
        return targets

    # -- reporting --------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Version, expiry and key ids of every top-level role (for ``status --json``)."""
        with self._locked():
            root = self._root()
            roles: dict[str, object] = {}
            for name, md in self._current.items():
                role: Role = root.roles[name]
                roles[name] = {
                    "version": md.signed.version,
                    "expires": md.signed.expires.isoformat(),
                    "keyids": sorted(role.keyids),
                    "threshold": role.threshold,
                }
            return {
                "path": str(self.path),
                "roles": roles,
                "targets": len(self._current_targets().targets),
            }


def root_bytes(repo_path: Path) -> bytes:
    """The current ``root.json`` of a repository (a device's initial trusted root)."""
    return (Path(repo_path) / "metadata" / "root.json").read_bytes()


__all__ = [
    "Expiries",
    "PublishError",
    "PublishedTarget",
    "RefreshResult",
    "RepositoryStateError",
    "SigningError",
    "TufRepository",
    "root_bytes",
    "utc_now",
]
