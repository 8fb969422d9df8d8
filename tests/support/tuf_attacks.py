"""Attacks on a served TUF repository directory, for the attack table tests.

Every helper takes the directory a mirror serves (``metadata/`` and ``targets/``) and
changes its files the way an attacker controlling the mirror (or holding some keys)
would. They know nothing of Edgefleet's server code, so the agent's updater tests reuse
them against the same repositories. Use ``capture`` first when an attack replays older
metadata.

| helper | attack | a stock ngclient raises |
|---|---|---|
| ``tamper_target`` | arbitrary software: target bytes changed | ``LengthOrHashMismatchError`` |
| ``replay_metadata`` | rollback: older, validly signed metadata | ``BadVersionNumberError`` |
| ``serve_stale`` | indefinite freeze: stale, expired metadata | ``ExpiredMetadataError`` |
| ``mix_and_match`` | old role bytes under the current name | ``LengthOrHashMismatchError`` |
| ``endless_target`` / ``endless_metadata`` | endless data | ``DownloadLengthMismatchError`` |
| ``forge_root`` / ``forge_role`` | signature threshold not met | ``UnsignedMetadataError`` |
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, Root, Timestamp


@dataclass(frozen=True)
class Captured:
    """The bytes of every metadata file of a repository at one moment."""

    files: dict[str, bytes]

    def version_of(self, role: str) -> int:
        """The version of ``role`` that was current when captured."""
        if role in ("root", "timestamp"):
            return int(json.loads(self.files[f"{role}.json"])["signed"]["version"])
        timestamp = json.loads(self.files["timestamp.json"])["signed"]
        snap = int(timestamp["meta"]["snapshot.json"]["version"])
        if role == "snapshot":
            return snap
        snapshot = json.loads(self.files[f"{snap}.snapshot.json"])["signed"]
        return int(snapshot["meta"][f"{role}.json"]["version"])


def capture(repo_dir: Path) -> Captured:
    """Copy the metadata of ``repo_dir`` as it is now."""
    meta = Path(repo_dir) / "metadata"
    return Captured({p.name: p.read_bytes() for p in meta.iterdir() if p.is_file()})


def current_version(repo_dir: Path, role: str) -> int:
    """The version of ``role`` the repository serves now."""
    return capture(repo_dir).version_of(role)


def target_files(repo_dir: Path, target_name: str) -> list[Path]:
    """The stored files of ``target_name`` (``targets/<hash>.<name>``)."""
    return sorted((Path(repo_dir) / "targets").glob(f"*.{target_name}"))


def tamper_target(repo_dir: Path, target_name: str, offset: int = 0) -> None:
    """Flip one byte of every stored copy of ``target_name``: same length, other bytes."""
    found = target_files(repo_dir, target_name)
    if not found:
        raise FileNotFoundError(f"no stored file for target {target_name}")
    for path in found:
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))


def replay_metadata(
    repo_dir: Path, captured: Captured, names: Sequence[str] = ("timestamp.json",)
) -> None:
    """Serve older (captured) bytes for ``names``: a rollback to validly signed old data."""
    for name in names:
        (Path(repo_dir) / "metadata" / name).write_bytes(captured.files[name])


def serve_stale(repo_dir: Path, captured: Captured) -> None:
    """Replace the whole metadata directory by a captured one: a mirror that froze."""
    meta = Path(repo_dir) / "metadata"
    shutil.rmtree(meta)
    meta.mkdir()
    for name, data in captured.files.items():
        (meta / name).write_bytes(data)


def mix_and_match(repo_dir: Path, captured: Captured, role: str = "targets") -> None:
    """Serve the captured (older) ``role`` metadata under the current version's file name,
    so a client is offered a snapshot/targets pair that never existed together."""
    now = current_version(repo_dir, role)
    old = captured.version_of(role)
    if old == now:
        raise ValueError(f"{role} did not change since the capture; publish something first")
    (Path(repo_dir) / "metadata" / f"{now}.{role}.json").write_bytes(
        captured.files[f"{old}.{role}.json"]
    )


def endless_target(repo_dir: Path, target_name: str, extra: int = 4 * 1024 * 1024) -> None:
    """Append ``extra`` bytes to every stored copy of ``target_name``."""
    for path in target_files(repo_dir, target_name):
        with path.open("ab") as fh:
            fh.write(b"\0" * extra)


def endless_metadata(
    repo_dir: Path, name: str = "timestamp.json", size: int = 2 * 1024 * 1024
) -> None:
    """Pad a metadata file with whitespace to ``size`` bytes (still valid JSON)."""
    path = Path(repo_dir) / "metadata" / name
    data = path.read_bytes()
    path.write_bytes(data + b" " * max(0, size - len(data)))


def forge_root(
    repo_dir: Path,
    signers: Sequence[Signer],
    mutate: Callable[[Root], None] | None = None,
) -> int:
    """Publish root N+1 signed only by ``signers`` (e.g. one stolen key of a 2-of-3 root),
    after ``mutate`` (default: hand the timestamp role to a fresh attacker key).
    Returns the forged version."""
    meta = Path(repo_dir) / "metadata"
    md = Metadata[Root].from_bytes((meta / "root.json").read_bytes())
    root = md.signed
    if mutate is None:
        attacker = CryptoSigner.generate_ed25519()

        def mutate(r: Root) -> None:
            for kid in list(r.roles[Timestamp.type].keyids):
                r.revoke_key(kid, Timestamp.type)
            r.add_key(attacker.public_key, Timestamp.type)

    mutate(root)
    root.version += 1
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    data = md.to_bytes()
    (meta / f"{root.version}.root.json").write_bytes(data)
    (meta / "root.json").write_bytes(data)
    return root.version


def forge_role(repo_dir: Path, role: str = Timestamp.type, signer: Signer | None = None) -> None:
    """Re-sign the current ``role`` metadata (version + 1, fresh expiry) with a key the
    root does not trust for it (default: a new attacker key)."""
    meta = Path(repo_dir) / "metadata"
    if role == Timestamp.type:
        path = meta / "timestamp.json"
    else:
        path = meta / f"{current_version(repo_dir, role)}.{role}.json"
    md = Metadata.from_bytes(path.read_bytes())
    md.signed.version += 1
    md.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    md.sign(signer or CryptoSigner.generate_ed25519())
    out = path if role == Timestamp.type else meta / f"{md.signed.version}.{role}.json"
    out.write_bytes(md.to_bytes())
