"""Signing of the TUF repository's metadata, and the operations that change its keys.

Online roles (targets, snapshot, timestamp) are signed with the server's keys from the
key directory (:func:`sign_online`). Root is signed only with the offline root keys
handed in for the operation that changes it, and a new root must meet the threshold of
both the previous root and itself, what a stock TUF client checks, before anything is
written (:func:`sign_root`). :func:`rotate_online_key`, :func:`rotate_root` and
:func:`resign_root` do the work of the :class:`~fleet_server.updates.tuf_repository.TufRepository`
methods of the same names, which document them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from securesystemslib.signer import Signer
from tuf.api.metadata import Key, Metadata, Root, Snapshot, Targets, Timestamp

from fleet_server.updates.keys import keyid, load_keys, new_signer, write_key

if TYPE_CHECKING:
    from fleet_server.updates.tuf_repository import TufRepository

ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)
"""The roles signed with the server's online keys."""


class SigningError(Exception):
    """Metadata could not be signed: a key is missing or a threshold is not met."""


def sign_online(md: Metadata, root: Root, keys_dir: Path) -> None:
    """Sign ``md`` with every key ``root`` trusts for its role found in ``keys_dir``.

    Raises:
        SigningError: no private key for the role in ``keys_dir``.
    """
    role = md.signed.type
    wanted = root.roles[role].keyids
    signers = {k: s for k, s in load_keys(keys_dir).items() if k in wanted}
    if not signers:
        raise SigningError(f"no private key for the {role} role in {keys_dir}")
    md.signatures.clear()
    for signer in signers.values():
        md.sign(signer, append=True)


def sign_root(md: Metadata, signers: Sequence[Signer], trusted: Root) -> None:
    """Sign a new root with those of ``signers`` that the ``trusted`` or the new root knows.

    Raises:
        SigningError: the signatures do not meet the threshold of the trusted root or of
            the new one (a stock TUF client checks both).
    """
    md.signatures.clear()
    new_root = md.signed
    assert isinstance(new_root, Root)
    known = set(trusted.roles[Root.type].keyids) | set(new_root.roles[Root.type].keyids)
    for signer in signers:
        if signer.public_key.keyid in known:
            md.sign(signer, append=True)
    for name, verifier in (("current", trusted), ("new", new_root)):
        result = verifier.get_verification_result(Root.type, md.signed_bytes, md.signatures)
        if not result:
            raise SigningError(
                f"the new root needs {result.threshold} signatures from the {name} root "
                f"keys, got {len(result.signed)}: plug in more root key directories"
            )


def rotate_online_key(repo: TufRepository, role: str, root_signers: Sequence[Signer]) -> str:
    """Replace ``role``'s online key (see ``TufRepository.rotate_online_key``)."""
    if role not in ONLINE_ROLES:
        raise ValueError(f"online roles are {', '.join(ONLINE_ROLES)}, not {role!r}")
    signer = new_signer()
    with repo._locked():
        old = list(repo._root().roles[role].keyids)
        new_path = write_key(repo.keys_dir, signer)
        try:
            with repo._root_change(root_signers) as root:
                for kid in old:
                    root.revoke_key(kid, role)
                root.add_key(signer.public_key, role)
        except BaseException:
            new_path.unlink(missing_ok=True)
            raise
        _resign_after_root_change(repo, role)
        for kid in old:
            (repo.keys_dir / f"{kid}.pem").unlink(missing_ok=True)
        repo._audit("rotate-online-key", role=role, old=old, new=keyid(signer))
    return keyid(signer)


def rotate_root(
    repo: TufRepository,
    new_root_keys: Sequence[Key],
    threshold: int,
    signers: Sequence[Signer],
) -> int:
    """Replace the root keys and threshold (see ``TufRepository.rotate_root``)."""
    with repo._locked():
        with repo._root_change(signers) as root:
            for kid in list(root.roles[Root.type].keyids):
                root.revoke_key(kid, Root.type)
            for key in new_root_keys:
                root.add_key(key, Root.type)
            root.roles[Root.type].threshold = threshold
        repo._audit(
            "rotate-root",
            version=repo._root().version,
            keyids=sorted(repo._root().roles[Root.type].keyids),
            threshold=threshold,
        )
    return repo._root().version


def resign_root(repo: TufRepository, signers: Sequence[Signer]) -> int:
    """Publish a new root version with the same keys (see ``TufRepository.resign_root``)."""
    with repo._locked():
        with repo._root_change(signers):
            pass
        repo._audit("resign-root", version=repo._root().version)
    return repo._root().version


def _resign_after_root_change(repo: TufRepository, role: str) -> None:
    if role == Targets.type:
        with repo.edit_targets():
            pass
    if role in (Targets.type, Snapshot.type):
        repo.do_snapshot(force=True)
    repo.do_timestamp(force=True)
