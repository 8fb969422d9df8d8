"""Read a bundle's manifest and summarise it, without unpacking the payload."""

from __future__ import annotations

from pathlib import Path

from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.files import sha256_file
from firmware_bundles.manifest import Manifest, manifest_to_dict
from firmware_bundles.tar_guard import Limits, open_guarded
from firmware_bundles.verify import read_manifest_member

_HEADER_LIMIT = 4 * 1024 * 1024


def read_manifest(path: Path) -> Manifest:
    """The manifest of the bundle at ``path`` (its first member); payload is not checked.

    Raises:
        BundleError: not a gzip tar, manifest not first, or manifest invalid.
    """
    try:
        with open_guarded(Path(path), Limits(), _HEADER_LIMIT) as archive:
            return read_manifest_member(archive.tar, archive.tar.next())
    except OSError as exc:
        raise BundleError(Reason.NOT_A_BUNDLE, f"{path} is not a valid bundle: {exc}") from None


def summary(path: Path, manifest: Manifest) -> dict[str, object]:
    """A JSON-compatible description of a bundle: file facts plus the whole manifest."""
    path = Path(path)
    sha256, size = sha256_file(path)
    return {
        "file": str(path),
        "size": size,
        "sha256": sha256,
        "manifest": manifest_to_dict(manifest),
    }
