"""Durable file writes and streaming sha256, shared by the agent and the server.

Both sides write files that must survive a power cut whole or not at all (the agent's
state, slot markers and credentials; the server's CA, broker configuration and TUF
metadata) and both hash bundles too large to hold in memory. This module is the one
implementation of each; it imports nothing from either side, so both may import it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

CHUNK = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Make a rename or new file in ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file created with
    ``mode``, write, fsync, rename, fsync the directory); a failure leaves the old file and
    no temp file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret (a private key) atomically with mode 0600 from its first byte."""
    atomic_write(Path(path), data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a non-secret file (certificate, chain, metadata) atomically, mode 0644."""
    atomic_write(Path(path), data, 0o644)


def previous_of(directory: Path) -> Path:
    """Where :func:`replace_directory` keeps the old directory during its swap."""
    return directory.with_name(f".{directory.name}.prev")


def restore_interrupted(directory: Path) -> None:
    """Put back the previous directory a :func:`replace_directory` cut between its two
    renames left beside ``directory`` (call before reading ``directory``)."""
    previous = previous_of(directory)
    if not directory.exists() and previous.is_dir():
        os.rename(previous, directory)


def replace_directory(
    directory: Path,
    files: Mapping[str, tuple[bytes, int]],
    check: Callable[[Path], object] | None = None,
) -> None:
    """Replace ``directory`` (mode 0700) as a whole by ``files`` (name -> (bytes, mode)).

    The files are written atomically into a staging directory next to it, ``check`` (if
    given) reads the staging directory and raises to refuse it, then two renames swap it
    in. A crash between the renames leaves the previous directory at ``.<name>.prev``,
    which :func:`restore_interrupted` puts back, so a reader finds the old directory or
    the new one, never a mix.
    """
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.new")
    previous = previous_of(directory)
    shutil.rmtree(staging, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    try:
        for name, (data, mode) in files.items():
            atomic_write(staging / name, data, mode)
        if check is not None:
            check(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(directory, previous)
        os.rename(staging, directory)
        fsync_dir(directory.parent)
        shutil.rmtree(previous)
    else:
        os.rename(staging, directory)
        fsync_dir(directory.parent)


def sha256_stream(source: IO[bytes], sink: IO[bytes] | None = None) -> tuple[str, int]:
    """Hex sha256 and length of everything left in ``source``, read in 1 MiB chunks and
    copied to ``sink`` on the way when one is given (a bundle is hashed while extracted)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return digest.hexdigest(), size


def sha256_file(path: Path) -> tuple[str, int]:
    """Hex sha256 and size of a whole file, streamed (a bundle's identity in its
    manifest, in TUF and in the registry)."""
    with Path(path).open("rb") as fh:
        return sha256_stream(fh)
