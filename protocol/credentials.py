"""The credentials bundle format (``edgefleet-credentials`` version 1), as bytes.

A credentials bundle is a directory::

    bundle.json    metadata: format, version, device_id, mqtt_url, api_url, not_after,
                   and the file names below (relative to the directory)
    device.key     PEM PKCS#8 private key, mode 0600
    device.crt     PEM device certificate (subject CN = device id)
    ca-chain.pem   PEM CA certificates the broker and API are verified against
                   (issuing CA first, then the root)
    tuf-root.json  optional: the trusted TUF root the updater starts from

The fleet CA writes it (factory provisioning, service credentials) and the agent reads,
checks and renews it, so the format lives here where both may import it. Pure: this
module turns arguments into the files' bytes and ``bundle.json`` bytes back into fields;
writing them (:func:`firmware_bundles.files.replace_directory`) and checking the key and
certificate (:func:`agent.credentials.read_bundle`) happen elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the objects are built by callers that have cryptography
    from cryptography import x509

BUNDLE_FORMAT = "edgefleet-credentials"
BUNDLE_VERSION = 1
METADATA_FILE = "bundle.json"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CHAIN_FILE = "ca-chain.pem"
TUF_ROOT_FILE = "tuf-root.json"
MAX_FILE_BYTES = 256 * 1024
BUNDLE_FILES = frozenset({METADATA_FILE, KEY_FILE, CERT_FILE, CHAIN_FILE, TUF_ROOT_FILE})


class BundleError(ValueError):
    """A credentials bundle is missing, malformed or unsafe; the message says which file
    and why."""


@dataclass(frozen=True, slots=True)
class CredentialsBundle:
    """A device's credentials as read from (or just written to) a directory.

    ``key_path``/``cert_path``/``chain_path`` are what an MQTT or HTTPS client needs:
    ``client.tls_set(ca_certs=b.chain_path, certfile=b.cert_path, keyfile=b.key_path)``.
    """

    directory: Path
    device_id: str
    mqtt_url: str
    api_url: str
    not_after: datetime
    certificate: x509.Certificate
    ca_chain: tuple[x509.Certificate, ...]
    tuf_root_path: Path | None

    @property
    def key_path(self) -> Path:
        """The private key file (0600)."""
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        """The device certificate file."""
        return self.directory / CERT_FILE

    @property
    def chain_path(self) -> Path:
        """The CA chain the device verifies servers against."""
        return self.directory / CHAIN_FILE


@dataclass(frozen=True, slots=True)
class BundleMetadata:
    """The fields of ``bundle.json`` a reader relies on."""

    device_id: str
    mqtt_url: str
    api_url: str
    has_tuf_root: bool


def check_replaceable(directory: Path, names: Iterable[str]) -> None:
    """Refuse to replace a directory that holds files (``names``) that are not part of a
    credentials bundle: whatever was there would be deleted with the old bundle.

    Raises:
        BundleError: naming (up to five of) the foreign files.
    """
    strangers = sorted(n for n in names if n not in BUNDLE_FILES)
    if strangers:
        raise BundleError(
            f"{directory}: holds files that are not part of a credentials bundle "
            f"({', '.join(strangers[:5])}); refusing to replace it, choose an empty directory"
        )


def bundle_files(
    *,
    device_id: str,
    key_pem: bytes,
    certificate_pem: bytes,
    ca_chain_pem: bytes,
    mqtt_url: str,
    api_url: str,
    not_after: datetime,
    tuf_root: bytes | None = None,
) -> dict[str, tuple[bytes, int]]:
    """The files of a bundle: name -> (content, mode); the key is 0600, the rest 0644."""
    files = {
        KEY_FILE: (key_pem, 0o600),
        CERT_FILE: (certificate_pem, 0o644),
        CHAIN_FILE: (ca_chain_pem, 0o644),
    }
    if tuf_root is not None:
        files[TUF_ROOT_FILE] = (tuf_root, 0o644)
    metadata = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "device_id": device_id,
        "mqtt_url": mqtt_url,
        "api_url": api_url,
        "not_after": not_after.isoformat(),
        "private_key": KEY_FILE,
        "certificate": CERT_FILE,
        "ca_chain": CHAIN_FILE,
        "tuf_root": TUF_ROOT_FILE if tuf_root is not None else None,
    }
    files[METADATA_FILE] = ((json.dumps(metadata, indent=2) + "\n").encode("utf-8"), 0o644)
    return files


def parse_metadata(raw: bytes, where: Path | str) -> BundleMetadata:
    """Parse and check ``bundle.json`` (``where`` names it in errors): this format and
    version, and non-empty ``device_id``, ``mqtt_url`` and ``api_url`` strings.

    Raises:
        BundleError: with the file and the reason.
    """
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{where}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{where}: not an {BUNDLE_FORMAT} version {BUNDLE_VERSION} bundle "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
        )
    fields: dict[str, str] = {}
    for field in ("device_id", "mqtt_url", "api_url"):
        value = meta.get(field)
        if not isinstance(value, str) or not value:
            raise BundleError(f"{where}: field {field!r} must be a non-empty string")
        fields[field] = value
    return BundleMetadata(has_tuf_root=bool(meta.get("tuf_root")), **fields)
