"""Verify a bundle and extract it safely, treating every bundle as hostile.

The archive is read as a stream, once. ``manifest.json`` must be its first member; every
later member must be a regular file (or a directory) under ``payload/`` that the manifest
lists, with the declared size and sha256. Symlinks, hard links, devices, FIFOs, absolute
paths, ``..``, duplicates and unlisted files are refused, as are archives whose
decompressed size passes the limits (gzip bombs, endless data) and, through
:mod:`firmware_bundles.tar_guard`, archives whose tar metadata (PAX headers, GNU long
names, sparse maps, declared sizes) passes them before it is read. Extraction writes files
itself (never ``tarfile.extractall``), only inside the destination, and removes what it
wrote when the bundle turns out to be bad.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.files import sha256_stream
from firmware_bundles.manifest import (
    MANIFEST_MAX_BYTES,
    MANIFEST_NAME,
    PAYLOAD_DIR,
    SBOM_DIR,
    Manifest,
    ManifestError,
    PayloadFile,
    SbomDocumentRef,
    check_payload_path,
    parse_manifest,
)
from firmware_bundles.tar_guard import Limits, open_guarded

_CHUNK = 1024 * 1024


def _member_path(member: tarfile.TarInfo) -> str:
    name = member.name.rstrip("/") if member.isdir() else member.name
    try:
        check_payload_path(name)
    except ManifestError as exc:
        raise BundleError(Reason.UNSAFE_PATH, f"member {member.name!r}: {exc}") from None
    return name


def read_manifest_member(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> Manifest:
    """Parse ``member`` as the bundle's manifest; it must be the regular file
    ``manifest.json`` (the first member of every bundle)."""
    if member is None:
        raise BundleError(Reason.NOT_A_BUNDLE, "the archive is empty")
    if member.name != MANIFEST_NAME or not member.isreg():
        raise BundleError(
            Reason.MANIFEST_NOT_FIRST,
            f"the first member must be the regular file {MANIFEST_NAME}, not {member.name!r}",
        )
    if member.size > MANIFEST_MAX_BYTES:
        raise BundleError(Reason.TOO_LARGE, f"{MANIFEST_NAME} is larger than {MANIFEST_MAX_BYTES}")
    fh = tar.extractfile(member)
    assert fh is not None  # a regular file always has a reader
    try:
        return parse_manifest(fh.read())
    except ManifestError as exc:
        raise BundleError(Reason.BAD_MANIFEST, str(exc)) from None


def _check_member(
    member: tarfile.TarInfo,
    expected: dict[str, PayloadFile],
    seen: set[str],
    directories: set[str],
) -> tuple[str, PayloadFile | None]:
    """Validate one non-manifest member; returns its payload path and manifest entry."""
    if not (member.isreg() or member.isdir()):
        kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
        raise BundleError(
            Reason.UNSUPPORTED_MEMBER, f"member {member.name!r} is a {kind}; only files allowed"
        )
    name = _member_path(member)
    if name in seen:
        raise BundleError(Reason.DUPLICATE_MEMBER, f"member {name!r} appears twice")
    seen.add(name)
    if member.isdir():
        rel = name[len(PAYLOAD_DIR) + 1 :] if name.startswith(PAYLOAD_DIR + "/") else None
        if name != PAYLOAD_DIR and rel not in directories:
            raise BundleError(Reason.UNEXPECTED_FILE, f"directory {name!r} is not in the manifest")
        return name, None
    if not name.startswith(PAYLOAD_DIR + "/") or name[len(PAYLOAD_DIR) + 1 :] not in expected:
        raise BundleError(Reason.UNEXPECTED_FILE, f"file {name!r} is not listed in the manifest")
    entry = expected[name[len(PAYLOAD_DIR) + 1 :]]
    if member.size != entry.size:
        raise BundleError(
            Reason.SIZE_MISMATCH,
            f"{entry.path}: archive says {member.size} bytes, manifest says {entry.size}",
        )
    return name, entry


def _walk(
    path: Path,
    limits: Limits,
    open_sink: Callable[[PayloadFile, bool], IO[bytes] | None],
) -> Manifest:
    """Stream through the bundle, checking every member; hand each file's bytes to a sink."""
    with open_guarded(path, limits) as archive:
        tar, stream = archive.tar, archive.stream
        manifest = read_manifest_member(tar, tar.next())
        if manifest.payload_size > limits.max_payload_bytes:
            raise BundleError(
                Reason.TOO_LARGE,
                f"payload of {manifest.payload_size} bytes passes the "
                f"{limits.max_payload_bytes}-byte limit",
            )
        expected = {f.path: f for f in manifest.payload}
        directories = {
            "/".join(p.split("/")[:i]) for p in expected for i in range(1, p.count("/") + 1)
        }
        seen: set[str] = {MANIFEST_NAME}
        count = 1
        sbom = manifest.sbom_document
        sbom_seen = sbom is None
        while (member := tar.next()) is not None:
            tar.members.clear()  # a stream keeps every member it read; nothing here needs them
            count += 1
            if count > limits.max_members:
                raise BundleError(Reason.TOO_LARGE, f"more than {limits.max_members} members")
            if sbom is not None and member.name in (sbom.member, SBOM_DIR, SBOM_DIR + "/"):
                sbom_seen = _check_sbom_member(tar, member, sbom, sbom_seen)
                continue
            _, entry = _check_member(member, expected, seen, directories)
            if entry is None:
                continue
            _copy_checked(tar, member, entry, open_sink(entry, bool(member.mode & 0o100)))
        if not sbom_seen:
            raise BundleError(Reason.MISSING_FILE, "the SBOM document is missing")
        missing = sorted(set(expected) - {s[len(PAYLOAD_DIR) + 1 :] for s in seen})
        if missing:
            raise BundleError(Reason.MISSING_FILE, f"payload file {missing[0]!r} is missing")
        # read to the end so gzip checks its CRC and length, and nothing hides after
        # the archive's end
        while chunk := stream.read(_CHUNK):
            if chunk.strip(b"\0"):
                raise BundleError(Reason.NOT_A_BUNDLE, "data after the end of the archive")
        return manifest


def _check_sbom_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, sbom: SbomDocumentRef, seen: bool
) -> bool:
    """Check the SBOM document member against the manifest (the ``sbom`` directory entry
    is allowed); returns whether the document has now been seen."""
    if member.isdir():
        return seen
    if seen or not member.isreg():
        raise BundleError(Reason.DUPLICATE_MEMBER, f"member {member.name!r} is unexpected")
    fh = tar.extractfile(member)
    assert fh is not None
    digest, size = sha256_stream(fh, None)
    if size != sbom.size or digest != sbom.sha256:
        raise BundleError(Reason.HASH_MISMATCH, f"{sbom.member}: differs from the manifest")
    return True


def read_sbom_member(path: Path) -> bytes | None:
    """The bytes of the bundle's SBOM document (checked against the manifest), or None
    when the bundle has none.

    Raises:
        BundleError: the bundle is invalid or the document differs from the manifest.
    """
    with open_guarded(Path(path), Limits()) as archive:
        manifest = read_manifest_member(archive.tar, archive.tar.next())
        sbom = manifest.sbom_document
        if sbom is None:
            return None
        while (member := archive.tar.next()) is not None:
            if member.name == sbom.member and member.isreg() and member.size == sbom.size:
                fh = archive.tar.extractfile(member)
                assert fh is not None
                data = fh.read(sbom.size + 1)
                if hashlib.sha256(data).hexdigest() != sbom.sha256:
                    break
                return data
    raise BundleError(Reason.MISSING_FILE, f"{path}: the SBOM document is missing or altered")


def _copy_checked(
    tar: tarfile.TarFile, member: tarfile.TarInfo, entry: PayloadFile, sink: IO[bytes] | None
) -> None:
    fh = tar.extractfile(member)
    assert fh is not None
    try:
        digest, size = sha256_stream(fh, sink)
    finally:
        if sink is not None:
            sink.close()
    if size != entry.size:
        raise BundleError(Reason.SIZE_MISMATCH, f"{entry.path}: truncated ({size} bytes)")
    if digest != entry.sha256:
        raise BundleError(Reason.HASH_MISMATCH, f"{entry.path}: sha256 differs from the manifest")


def verify_bundle(path: Path, limits: Limits | None = None) -> Manifest:
    """Check a bundle completely without writing anything; return its manifest.

    Raises:
        BundleError: with the reason the bundle is refused.
    """
    return _walk(Path(path), limits or Limits(), lambda _entry, _exec: None)


def extract_bundle(path: Path, dest: Path, limits: Limits | None = None) -> Manifest:
    """Verify a bundle while extracting its payload into ``dest`` (created, must be empty).

    Files land at ``dest/<payload path>`` with mode 0644 or 0755. Nothing is written outside
    ``dest``; on any error everything written is removed and ``BundleError`` is raised.
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(Reason.DESTINATION_NOT_EMPTY, f"{dest} exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()

    def open_sink(entry: PayloadFile, executable: bool) -> IO[bytes]:
        target = root.joinpath(*entry.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.resolve().is_relative_to(root):  # defence in depth: paths were checked
            raise BundleError(Reason.UNSAFE_PATH, f"{entry.path!r} leaves the destination")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o755 if executable else 0o644)
        return os.fdopen(fd, "wb")

    try:
        return _walk(path, limits or Limits(), open_sink)
    except BaseException:
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        raise
