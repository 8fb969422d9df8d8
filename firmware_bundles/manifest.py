"""Bundle manifest: the typed, strictly validated description of an update bundle.

A bundle's ``manifest.json`` says what the bundle is (product, model, semver version,
release counter), where it may run (hardware revisions, minimum agent version), what it
contains (payload files with size and sha256), how a device decides it is healthy after
the update (health-check spec) and what it is made of (its components with SPDX
licences, and the standard SBOM document they come from, when there is one). An optional
``simulation`` block is read only by simulated devices.

This module is pure (msgspec and the standard library only) so the agent can import it.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Literal

import msgspec

MANIFEST_NAME = "manifest.json"
"""Name of the manifest inside a bundle (and inside a bundle source directory)."""

PAYLOAD_DIR = "payload"
"""Directory of a bundle (and of its source) that holds the payload files."""

SBOM_DIR = "sbom"
"""Directory of a bundle that holds its standard SBOM document (when it has one)."""

# semver.org 2.0.0, the official regular expression.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
_HARDWARE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_SHA256 = r"^[0-9a-f]{64}$"

Slug = Annotated[str, msgspec.Meta(pattern=_SLUG)]
HardwareRevision = Annotated[str, msgspec.Meta(pattern=_HARDWARE)]
Sha256 = Annotated[str, msgspec.Meta(pattern=_SHA256)]
Version = Annotated[str, msgspec.Meta(max_length=64)]

MAX_PAYLOAD_FILES = 10_000


class ManifestError(ValueError):
    """A manifest is malformed or invalid; the message names the field and the rule."""


def is_semver(text: str) -> bool:
    """True when ``text`` is a semantic version (semver.org 2.0.0)."""
    return bool(_SEMVER.match(text))


def semver_key(text: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
    """Sort key that orders versions by semver precedence (build metadata ignored).

    Raises:
        ManifestError: ``text`` is not a semantic version.
    """
    match = _SEMVER.match(text)
    if not match:
        raise ManifestError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        return (int(major), int(minor), int(patch), 1, ())
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (int(major), int(minor), int(patch), 0, parts)  # type: ignore[return-value]


def check_payload_path(path: str) -> None:
    """Check a payload path is relative, normalised and stays inside the payload.

    Raises:
        ManifestError: absolute, ``..``, empty parts, backslashes or control characters.
    """
    if not path or path.startswith("/") or "\\" in path:
        raise ManifestError(f"payload path {path!r} must be relative and use '/'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ManifestError(f"payload path {path!r} contains control characters")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ManifestError(f"payload path {path!r} has empty, '.' or '..' parts")
    if len(path) > 255:
        raise ManifestError(f"payload path {path[:40]!r}... is longer than 255 characters")


class PayloadFile(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One file of the payload: path relative to ``payload/``, size and sha256."""

    path: str
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]

    def __post_init__(self) -> None:
        check_payload_path(self.path)


class HealthCheck(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How a device decides the new software is healthy during the trial boot.

    Every field is optional; the agent applies those that are present.
    """

    timeout_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 60
    command: list[str] | None = None
    systemd_unit: str | None = None
    require_server: bool = True

    def __post_init__(self) -> None:
        if self.command is not None and (not self.command or not all(self.command)):
            raise ManifestError("health_check.command must be a non-empty list of arguments")


class SbomComponent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One software component shipped in the bundle: name, version, SPDX licence
    expression (None when the SBOM asserts none), purl, supplier and hashes.

    The licence is checked against the SPDX list by the build and by the server's
    publish path (:mod:`firmware_bundles.licences`); a device does not judge licences.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    version: Annotated[str, msgspec.Meta(max_length=200)]
    licence: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)] | None = None
    purl: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    supplier: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    hashes: dict[str, str] = {}


class SbomDocumentRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The standard SBOM document stored in the bundle as ``sbom/<path>``."""

    path: Literal["sbom.cdx.json", "sbom.spdx.json", "sbom.spdx"]
    format: Literal["cyclonedx", "spdx"]
    spec_version: Annotated[str, msgspec.Meta(max_length=16)]
    sha256: Sha256
    size: Annotated[int, msgspec.Meta(ge=0)]

    @property
    def member(self) -> str:
        """The archive member that holds the document."""
        return f"{SBOM_DIR}/{self.path}"


class Simulation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Behaviour of this bundle on *simulated* devices only; real agents ignore it."""

    boot: Literal["ok", "crash"] = "ok"
    health: Literal["pass", "fail"] = "pass"
    fail_on_hardware: list[HardwareRevision] = []
    fault_rate_multiplier: Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)] = 1.0


PI_MODELS = ("pi4", "pi400", "cm4", "pi5", "pi500", "cm5")
"""Raspberry Pi boards with an EEPROM bootloader that does ``tryboot`` A/B."""


class RaspberryPi(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where a whole-image bundle (``rootfs.img``, ``boot.img``) may be flashed: the Pi
    models and the oldest bootloader EEPROM (its build date) the tryboot slots need."""

    models: Annotated[list[str], msgspec.Meta(min_length=1)]
    min_eeprom: str | None = None
    """``YYYY-MM-DD``: the EEPROM's build date must be this day or later."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in PI_MODELS]
        if unknown:
            raise ManifestError(
                f"raspberry_pi.models: {unknown[0]!r} is not one of {', '.join(PI_MODELS)}"
            )
        if len(set(self.models)) != len(self.models):
            raise ManifestError("raspberry_pi.models lists a model twice")
        if self.min_eeprom is not None:
            try:
                date.fromisoformat(self.min_eeprom)
            except ValueError:
                raise ManifestError(
                    f"raspberry_pi.min_eeprom {self.min_eeprom!r} is not a date (YYYY-MM-DD)"
                ) from None
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", self.min_eeprom):
                raise ManifestError(
                    f"raspberry_pi.min_eeprom {self.min_eeprom!r} is not a date (YYYY-MM-DD)"
                )


class Manifest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The manifest of one bundle (``manifest.json``)."""

    product: Slug
    model: Slug
    version: Version
    hardware_revisions: Annotated[list[HardwareRevision], msgspec.Meta(min_length=1)]
    min_agent_version: Version
    release_counter: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    payload: list[PayloadFile]
    sbom: Annotated[list[SbomComponent], msgspec.Meta(min_length=1)]
    health_check: HealthCheck | None = None
    channel: Slug | None = None
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    simulation: Simulation | None = None
    raspberry_pi: RaspberryPi | None = None
    sbom_document: SbomDocumentRef | None = None
    format: Literal[1] = 1

    def __post_init__(self) -> None:
        for field in ("version", "min_agent_version"):
            value = getattr(self, field)
            if not is_semver(value):
                raise ManifestError(f"{field} {value!r} is not a semantic version (1.2.3)")
        if len(set(self.hardware_revisions)) != len(self.hardware_revisions):
            raise ManifestError("hardware_revisions lists a revision twice")
        if len(self.payload) > MAX_PAYLOAD_FILES:
            raise ManifestError(f"payload lists more than {MAX_PAYLOAD_FILES} files")
        paths = [f.path for f in self.payload]
        if len(set(paths)) != len(paths):
            raise ManifestError("payload lists a path twice")
        prefixes = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
        clash = prefixes & set(paths)
        if clash:
            raise ManifestError(f"payload path {sorted(clash)[0]!r} is both a file and a directory")

    @property
    def payload_size(self) -> int:
        """Total size in bytes of the payload files."""
        return sum(f.size for f in self.payload)

    def bundle_filename(self) -> str:
        """Canonical file name of the built bundle (also its TUF target name)."""
        return f"{self.product}-{self.model}-{self.version}-r{self.release_counter}.tar.gz"


MANIFEST_MAX_BYTES = 4 * 1024 * 1024


def parse_manifest(data: bytes | str) -> Manifest:
    """Decode and validate a manifest.

    Raises:
        ManifestError: the document is not JSON, misses a field, has a field of the wrong
            type or value, or an unknown field; the message names the field.
    """
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"manifest is larger than {MANIFEST_MAX_BYTES} bytes")
    try:
        return msgspec.json.decode(data, type=Manifest)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"invalid manifest: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical, deterministic JSON of a manifest (sorted keys, 2-space indent)."""
    raw = msgspec.json.encode(manifest, order="sorted")
    return msgspec.json.format(raw, indent=2) + b"\n"


def manifest_to_dict(manifest: Manifest) -> dict[str, object]:
    """The manifest as plain JSON-compatible builtins (for ``--json`` output)."""
    return msgspec.to_builtins(manifest, order="sorted")  # type: ignore[no-any-return]
