"""Signing of the TUF repository's metadata, and key rotation.

Online roles (targets, snapshot, timestamp) are signed with the server's keys from
``keys_dir``. Root is signed only with the offline root keys handed in for the operation
that changes it, and a new root must meet the threshold of both the previous root and
itself (what a stock TUF client checks) before anything is written.
:class:`SigningRepository` holds these rules and the operations that change keys
(:meth:`~SigningRepository.rotate_online_key`, :meth:`~SigningRepository.rotate_root`,
:meth:`~SigningRepository.resign_root`);
:class:`fleet_server.updates.tuf_repository.TufRepository` adds the storage.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from copy import deepcopy
from pathlib import Path

from securesystemslib.signer import Signer
from tuf.api.metadata import Key, Metadata, Root, Snapshot, Targets, Timestamp
from tuf.repository import Repository

from fleet_server.updates.keys import keyid, load_keys, new_signer, write_key

ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)


class SigningError(Exception):
    """Metadata could not be signed: a key is missing or a threshold is not met."""


class SigningRepository(Repository):
    """Signing rules and key rotation of a TUF repository (python-tuf ``Repository``).

    The subclass provides the storage: the current root (:meth:`_root`), the exclusive
    lock over fresh state from disk (:meth:`_locked`), the audit log (:meth:`_audit`),
    ``keys_dir`` and the ``_root_signers`` / ``_previous_root`` slots a root change uses.
    """

    keys_dir: Path
    _root_signers: list[Signer]
    _previous_root: Root | None

    @abstractmethod
    def _root(self) -> Root:
        """The current root metadata's signed part."""

    @abstractmethod
    def _locked(self) -> AbstractContextManager[None]:
        """Hold the repository's exclusive lock and work on fresh state from disk."""

    @abstractmethod
    def _audit(self, action: str, **details: object) -> None:
        """Record one change: who changed what, when."""

    def _sign_online(self, md: Metadata) -> None:
        role = md.signed.type
        wanted = self._root().roles[role].keyids
        signers = {k: s for k, s in load_keys(self.keys_dir).items() if k in wanted}
        if not signers:
            raise SigningError(f"no private key for the {role} role in {self.keys_dir}")
        md.signatures.clear()
        for signer in signers.values():
            md.sign(signer, append=True)

    def _sign_root(self, md: Metadata) -> None:
        md.signatures.clear()
        new_root = md.signed
        assert isinstance(new_root, Root)
        usable = [
            s for s in self._root_signers if s.public_key.keyid in self._all_root_keyids(new_root)
        ]
        for signer in usable:
            md.sign(signer, append=True)
        trusted = self._previous_root or self._root()
        for name, verifier in (("current", trusted), ("new", new_root)):
            result = verifier.get_verification_result(Root.type, md.signed_bytes, md.signatures)
            if not result:
                raise SigningError(
                    f"the new root needs {result.threshold} signatures from the {name} root "
                    f"keys, got {len(result.signed)}: plug in more root key directories"
                )

    def _all_root_keyids(self, new_root: Root) -> set[str]:
        trusted = self._previous_root or self._root()
        return set(trusted.roles[Root.type].keyids) | set(new_root.roles[Root.type].keyids)

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

    def rotate_online_key(self, role: str, root_signers: Sequence[Signer]) -> str:
        """Replace ``role``'s online key: new key in ``keys_dir``, new root signed by the
        root keys, then ``role`` (and what depends on it) re-signed with the new key.
        The old private key file is deleted. Returns the new key id.

        Raises:
            ValueError: ``role`` is not targets, snapshot or timestamp.
            SigningError: the root signers do not meet the root threshold.
        """
        if role not in ONLINE_ROLES:
            raise ValueError(f"online roles are {', '.join(ONLINE_ROLES)}, not {role!r}")
        signer = new_signer()
        with self._locked():
            old = list(self._root().roles[role].keyids)
            new_path = write_key(self.keys_dir, signer)
            try:
                with self._root_change(root_signers) as root:
                    for kid in old:
                        root.revoke_key(kid, role)
                    root.add_key(signer.public_key, role)
            except BaseException:
                new_path.unlink(missing_ok=True)
                raise
            self._resign_after_root_change(role)
            for kid in old:
                (self.keys_dir / f"{kid}.pem").unlink(missing_ok=True)
            self._audit("rotate-online-key", role=role, old=old, new=keyid(signer))
        return keyid(signer)

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
        with self._locked():
            with self._root_change(signers) as root:
                for kid in list(root.roles[Root.type].keyids):
                    root.revoke_key(kid, Root.type)
                for key in new_root_keys:
                    root.add_key(key, Root.type)
                root.roles[Root.type].threshold = threshold
            self._audit(
                "rotate-root",
                version=self._root().version,
                keyids=sorted(self._root().roles[Root.type].keyids),
                threshold=threshold,
            )
        return self._root().version

    def resign_root(self, signers: Sequence[Signer]) -> int:
        """Publish a new root version with the same keys and a fresh expiry date.

        Raises:
            SigningError: the root threshold is not met; nothing is written.
        """
        with self._locked():
            with self._root_change(signers):
                pass
            self._audit("resign-root", version=self._root().version)
        return self._root().version

    def _resign_after_root_change(self, role: str) -> None:
        if role == Targets.type:
            with self.edit_targets():
                pass
        if role in (Targets.type, Snapshot.type):
            self.do_snapshot(force=True)
        self.do_timestamp(force=True)
