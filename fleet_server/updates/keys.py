"""Private keys of the TUF repository: generated, stored and loaded with owner-only access.

Keys are Ed25519, generated through python-tuf's signer API (securesystemslib's
``CryptoSigner``, backed by ``cryptography``), and stored one per file as unencrypted
PKCS#8 PEM named ``<keyid>.pem`` in a directory with mode 0700, files with mode 0600.
Loading refuses a key file that group or others can read.

Two kinds of directories hold them:

* the **online key directory** of the server (targets, snapshot, timestamp keys), used
  by the API process and the re-signing job;
* **offline root key directories**, created by ``fleet-server keys create-root`` on a
  machine or a removable medium the operator keeps offline, and plugged in only to sign
  a new root (initialisation, rotation, expiry extension).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

ROOT_KEYS_INFO = "root-keys.json"
"""File in an offline root key directory describing its keys (public data only)."""


class KeyFileError(Exception):
    """A key file or key directory is missing, unreadable, too open, or not a key."""


def new_signer() -> CryptoSigner:
    """A fresh Ed25519 signing key."""
    return CryptoSigner.generate_ed25519()


def keyid(signer: CryptoSigner) -> str:
    """The TUF key id of a signer (sha256 of its canonical public key)."""
    return str(signer.public_key.keyid)


def _ensure_private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)


def write_key(directory: Path, signer: CryptoSigner) -> Path:
    """Store ``signer`` as ``directory/<keyid>.pem`` (0600; the directory becomes 0700).

    Raises:
        KeyFileError: the key file already exists.
    """
    directory = Path(directory)
    _ensure_private_dir(directory)
    path = directory / f"{keyid(signer)}.pem"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(signer.private_bytes)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def load_key(path: Path) -> CryptoSigner:
    """Load one private key file.

    Raises:
        KeyFileError: unreadable, readable by group/others, or not a PEM private key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is accessible by group or others; run: chmod 600 {path}")
    try:
        private = load_pem_private_key(data, password=None)
        return CryptoSigner(private)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None


def load_keys(directory: Path) -> dict[str, CryptoSigner]:
    """Every ``*.pem`` key of ``directory`` by key id (an absent directory gives none).

    Raises:
        KeyFileError: a key file is bad or too open, or a file's name is not its key id.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    found: dict[str, CryptoSigner] = {}
    for path in sorted(directory.glob("*.pem")):
        signer = load_key(path)
        if path.stem != keyid(signer):
            raise KeyFileError(f"{path} holds key {keyid(signer)}, not {path.stem}")
        found[keyid(signer)] = signer
    return found


@dataclass(frozen=True)
class RootKeySet:
    """An offline root key directory: its signers and the threshold it was made for."""

    directory: Path
    signers: dict[str, CryptoSigner]
    threshold: int


def create_root_keys(directory: Path, count: int, threshold: int) -> RootKeySet:
    """Generate ``count`` root keys into ``directory`` for a root of ``threshold``.

    Raises:
        KeyFileError: the directory already holds keys.
        ValueError: threshold not in 1..count.
    """
    if count < 1 or not 1 <= threshold <= count:
        raise ValueError(f"threshold must be between 1 and the key count ({count})")
    directory = Path(directory)
    if directory.is_dir() and any(directory.glob("*.pem")):
        raise KeyFileError(f"{directory} already holds keys; use an empty directory")
    signers = [new_signer() for _ in range(count)]
    for signer in signers:
        write_key(directory, signer)
    info = {
        "threshold": threshold,
        "keys": {keyid(s): s.public_key.to_dict() for s in signers},
    }
    (directory / ROOT_KEYS_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return RootKeySet(directory, {keyid(s): s for s in signers}, threshold)


def load_root_keys(directory: Path) -> RootKeySet:
    """Load an offline root key directory created by ``create_root_keys``.

    Raises:
        KeyFileError: missing directory, missing or invalid ``root-keys.json``, bad keys.
    """
    directory = Path(directory)
    info_path = directory / ROOT_KEYS_INFO
    try:
        info = json.loads(info_path.read_text())
        threshold = int(info["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(
            f"{directory} is not a root key directory ({info_path}: {exc})"
        ) from None
    return RootKeySet(directory, load_keys(directory), threshold)
