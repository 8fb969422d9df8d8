"""Build a bundle from a source directory, deterministically.

A source directory holds ``manifest.json`` and a ``payload/`` tree. The manifest may omit
``payload``: the build lists every file of ``payload/`` with its size and sha256. When the
manifest does list ``payload``, the files on disk must match it exactly. A standard SBOM
document next to the manifest (:mod:`firmware_bundles.sbom`) is validated, stored as
``sbom/<name>`` and fills the manifest's ``sbom`` list, which must then be omitted.

The archive is a gzip-compressed tar whose first member is ``manifest.json``, followed by
the payload files in sorted order, with mtime, uid and gid 0, empty owner names and fixed
mode bits (0644, or 0755 for executables), and gzip mtime 0: the same source gives a
byte-identical bundle on any machine with the same zlib.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import msgspec

from firmware_bundles.errors import BundleError, Reason
from firmware_bundles.files import sha256_file
from firmware_bundles.manifest import (
    MANIFEST_NAME,
    PAYLOAD_DIR,
    Manifest,
    ManifestError,
    SbomComponent,
    encode_manifest,
    parse_manifest,
)
from firmware_bundles.sbom import SbomError, convert_legacy, find_sbom, parse_sbom


@dataclass(frozen=True)
class BuiltBundle:
    """What ``build_bundle`` produced: the file, its manifest, its sha256 and size."""

    path: Path
    manifest: Manifest
    sha256: str
    size: int


@dataclass(frozen=True)
class _SbomFile:
    name: str
    data: bytes


@dataclass(frozen=True)
class _SourceFile:
    path: str
    disk: Path
    size: int
    sha256: str
    executable: bool


def _scan_payload(root: Path) -> list[_SourceFile]:
    """Every regular file under ``root``, sorted; refuses symlinks and special files."""
    found: list[_SourceFile] = []
    if not root.is_dir() or root.is_symlink():
        raise BundleError(Reason.BAD_SOURCE, f"{root} is missing or not a directory")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            disk = Path(dirpath) / name
            mode = disk.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(Reason.BAD_SOURCE, f"{disk} is a symlink; bundles hold files")
            if name in filenames and not stat.S_ISREG(mode):
                raise BundleError(Reason.BAD_SOURCE, f"{disk} is not a regular file")
        for name in filenames:
            disk = Path(dirpath) / name
            rel = disk.relative_to(root).as_posix()
            digest, size = sha256_file(disk)
            executable = bool(disk.stat().st_mode & stat.S_IXUSR)
            found.append(_SourceFile(rel, disk, size, digest, executable))
    return sorted(found, key=lambda f: f.path)


def _load_sbom(src: Path, doc: dict[str, object], where: Path) -> _SbomFile | None:
    """Validate the source's SBOM document (if any) and put its components in ``doc``;
    without one, convert the manifest's own list (licences checked, generic purls)."""
    try:
        found = find_sbom(src)
        if found is None:
            listed = doc.get("sbom")
            if isinstance(listed, list) and listed:
                parsed = msgspec.convert(listed, list[SbomComponent])
                doc["sbom"] = msgspec.to_builtins(convert_legacy(parsed))
            return None
        if "sbom" in doc:
            raise SbomError(f"{where} lists `sbom` and {found.name} is present; keep only one")
        data = found.read_bytes()
        parsed_doc = parse_sbom(data, found.name)
    except SbomError as exc:
        raise BundleError(Reason.BAD_SBOM, str(exc)) from None
    except msgspec.ValidationError as exc:
        raise BundleError(Reason.BAD_MANIFEST, f"{where}: invalid manifest: {exc}") from None
    if not parsed_doc.components:
        raise BundleError(Reason.BAD_SBOM, f"{found.name} lists no components")
    doc["sbom"] = msgspec.to_builtins(parsed_doc.components)
    doc["sbom_document"] = {
        "path": found.name,
        "format": parsed_doc.format,
        "spec_version": parsed_doc.spec_version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    return _SbomFile(found.name, data)


def load_source(src: Path) -> tuple[Manifest, list[_SourceFile]]:
    """Read and validate a bundle source directory (manifest + payload files).

    Raises:
        BundleError: missing manifest, invalid manifest or SBOM, unsafe files, or listed
            payload that does not match the files on disk.
    """
    manifest, files, _sbom = _load_source(src)
    return manifest, files


def _load_source(src: Path) -> tuple[Manifest, list[_SourceFile], _SbomFile | None]:
    manifest_path = src / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(Reason.BAD_SOURCE, f"{src} has no {MANIFEST_NAME}")
    try:
        doc = json.loads(manifest_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(
            Reason.BAD_MANIFEST, f"{manifest_path} is not valid JSON: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise BundleError(Reason.BAD_MANIFEST, f"{manifest_path} must hold a JSON object")
    if doc.get("sbom_document") is not None:
        raise BundleError(Reason.BAD_MANIFEST, f"{manifest_path}: the build sets sbom_document")
    sbom_file = _load_sbom(src, doc, manifest_path)
    files = _scan_payload(src / PAYLOAD_DIR)
    computed = [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files]
    listed = doc.get("payload")
    if listed is None:
        doc["payload"] = computed
    try:
        manifest = parse_manifest(json.dumps(doc))
    except ManifestError as exc:
        raise BundleError(Reason.BAD_MANIFEST, f"{manifest_path}: {exc}") from None
    if listed is not None:
        on_disk = {(f.path, f.sha256, f.size) for f in files}
        declared = {(f.path, f.sha256, f.size) for f in manifest.payload}
        if on_disk != declared:
            diff = sorted({p for p, _, _ in on_disk ^ declared})
            raise BundleError(
                Reason.BAD_SOURCE,
                f"{manifest_path} lists payload that differs from payload/ on disk: {diff[:5]}",
            )
    return manifest, files, sbom_file


def _tarinfo(name: str, size: int, executable: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_bundle(
    manifest: Manifest, files: list[_SourceFile], out_file: Path, sbom: bytes | None = None
) -> None:
    """Write the deterministic archive for ``manifest``, its SBOM document (when it has
    one, right after the manifest) and ``files`` to ``out_file``."""
    manifest_bytes = encode_manifest(manifest)
    with (
        out_file.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_bytes), False), io.BytesIO(manifest_bytes))
        if manifest.sbom_document is not None and sbom is not None:
            member = manifest.sbom_document.member
            tar.addfile(_tarinfo(member, len(sbom), False), io.BytesIO(sbom))
        for f in files:
            with f.disk.open("rb") as fh:
                tar.addfile(_tarinfo(f"{PAYLOAD_DIR}/{f.path}", f.size, f.executable), fh)


def build_bundle(src: Path, out: Path) -> BuiltBundle:
    """Build the bundle for source directory ``src`` into ``out``.

    ``out`` is the bundle file, or an existing directory that receives
    ``<product>-<model>-<version>-r<counter>.tar.gz``. The file is written to a temporary
    name and renamed, so a reader never sees a half-written bundle.

    Raises:
        BundleError: the source is invalid (see ``load_source``).
    """
    manifest, files, sbom = _load_source(src)
    target = out / manifest.bundle_filename() if out.is_dir() else out
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".bundle-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_bundle(manifest, files, tmp, sbom.data if sbom else None)
        # a changed file between scan and write would make the bundle lie about itself
        for f in files:
            if sha256_file(f.disk) != (f.sha256, f.size):
                raise BundleError(Reason.BAD_SOURCE, f"{f.disk} changed during the build")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    digest, size = sha256_file(target)
    return BuiltBundle(target, manifest, digest, size)
