"""Read a bundle's manifest and summarise it, without unpacking the payload."""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from pathlib import Path

from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.manifest import Manifest, manifest_to_dict
from firmware_bundles.verify import open_bundle_stream, read_manifest_member

_HEADER_LIMIT = 4 * 1024 * 1024


def read_manifest(path: Path) -> Manifest:
    """The manifest of the bundle at ``path`` (its first member); payload is not checked.

    Raises:
        BundleError: not a gzip tar, manifest not first, or manifest invalid.
    """
    raw, stream = open_bundle_stream(Path(path), _HEADER_LIMIT)
    try:
        with raw, tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            return read_manifest_member(tar, tar.next())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BundleError(Reason.NOT_A_BUNDLE, f"{path} is not a valid bundle: {exc}") from None


def file_sha256(path: Path) -> str:
    """Hex sha256 of a whole file (the bundle's identity in TUF and in the registry)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def summary(path: Path, manifest: Manifest) -> dict[str, object]:
    """A JSON-compatible description of a bundle: file facts plus the whole manifest."""
    path = Path(path)
    return {
        "file": str(path),
        "size": path.stat().st_size,
        "sha256": file_sha256(path),
        "manifest": manifest_to_dict(manifest),
    }
