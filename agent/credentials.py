"""Device credentials: the device's own key, its CSR, and the credentials bundle on disk.

A device proves who it is to the broker and the API with a client certificate whose
subject CN is its device id. Where possible the key is generated *on the device*
(:func:`make_device_key_and_csr`) and only the CSR leaves it; the fleet CA answers with a
certificate. The factory flow (``fleet-server ca provision``) generates the key on the
server instead and ships the whole bundle.

The credentials bundle is a directory (format ``edgefleet-credentials`` version 1)::

    bundle.json    metadata: format, version, device_id, mqtt_url, api_url, not_after,
                   and the file names below (relative to the directory)
    device.key     PEM PKCS#8 private key, mode 0600
    device.crt     PEM device certificate (subject CN = device id)
    ca-chain.pem   PEM CA certificates the broker and API are verified against
                   (issuing CA first, then the root)
    tuf-root.json  optional: the trusted TUF root the updater starts from

Every file is written atomically (temporary file, fsync, rename), the key with mode 0600
from the moment it exists, and a bundle is replaced as a whole (:func:`write_bundle`), so
a renewal cut by a power loss leaves the previous credentials. :func:`read_bundle`
refuses a bundle whose key is readable by group or others, whose key does not match its
certificate, or whose certificate names another device.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.state import atomic_write, fsync_dir
from protocol.topics import DEVICE_ID_PATTERN, is_valid_device_id

BUNDLE_FORMAT = "edgefleet-credentials"
BUNDLE_VERSION = 1
METADATA_FILE = "bundle.json"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CHAIN_FILE = "ca-chain.pem"
TUF_ROOT_FILE = "tuf-root.json"
ORGANIZATION = "Edgefleet"
_MAX_FILE_BYTES = 256 * 1024
_BUNDLE_FILES = frozenset({METADATA_FILE, KEY_FILE, CERT_FILE, CHAIN_FILE, TUF_ROOT_FILE})


class BundleError(ValueError):
    """A credentials bundle is missing, malformed or unsafe; the message says which file
    and why."""


@dataclass(frozen=True, slots=True)
class DeviceKeyAndCsr:
    """A freshly generated device key (PEM, PKCS#8, unencrypted) and its CSR (PEM)."""

    key_pem: bytes
    csr_pem: bytes


def make_device_key_and_csr(device_id: str) -> DeviceKeyAndCsr:
    """Generate an ECDSA P-256 key and a CSR with subject ``CN=<device_id>, O=Edgefleet``.

    The agent calls this on the device so the private key never leaves it; it sends
    ``csr_pem`` to the fleet CA and keeps ``key_pem`` (write it with
    :func:`write_private_file`). P-256 is small, fast on a Raspberry Pi and accepted for
    TLS client authentication everywhere.

    Raises:
        ValueError: ``device_id`` cannot be a topic segment / certificate subject.
    """
    if not is_valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}: expected {DEVICE_ID_PATTERN}")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return DeviceKeyAndCsr(
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM),
    )


# --- atomic files ----------------------------------------------------------------------


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret (a private key) atomically with mode 0600 from its first byte."""
    atomic_write(Path(path), data, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a non-secret file (certificate, chain, metadata) atomically, mode 0644."""
    atomic_write(Path(path), data, 0o644)


# --- the bundle ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialsBundle:
    """A device's credentials as read from (or about to be written to) a directory.

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


def _check_replaceable(directory: Path) -> None:
    if not directory.exists():
        return
    if not directory.is_dir():
        raise BundleError(f"{directory}: exists and is not a directory")
    strangers = sorted(p.name for p in directory.iterdir() if p.name not in _BUNDLE_FILES)
    if strangers:
        raise BundleError(
            f"{directory}: holds files that are not part of a credentials bundle "
            f"({', '.join(strangers[:5])}); refusing to replace it, choose an empty directory"
        )


def write_bundle(
    directory: Path,
    *,
    device_id: str,
    key_pem: bytes,
    certificate_pem: bytes,
    ca_chain_pem: bytes,
    mqtt_url: str,
    api_url: str,
    tuf_root: bytes | None = None,
) -> CredentialsBundle:
    """Write a credentials bundle as ``directory`` (mode 0700), replacing a previous
    bundle there as a whole.

    The files are written into a staging directory next to it, checked with
    :func:`read_bundle`, then swapped in with two renames; a crash between them leaves
    the previous bundle at ``.<name>.prev``, which :func:`read_bundle` puts back. So a
    renewal interrupted by a power cut leaves the old, still valid credentials, never a
    key that does not match its certificate. An existing directory holding anything but
    bundle files is refused rather than replaced.

    Raises:
        BundleError: the parts do not form a valid bundle (key/certificate mismatch,
            certificate for another device, bad PEM), or ``directory`` holds other files.
    """
    directory = Path(directory)
    _check_replaceable(directory)
    _parse_certificate(certificate_pem, CERT_FILE)
    staging = directory.with_name(f".{directory.name}.new")
    previous = directory.with_name(f".{directory.name}.prev")
    shutil.rmtree(staging, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    try:
        write_private_file(staging / KEY_FILE, key_pem)
        write_public_file(staging / CERT_FILE, certificate_pem)
        write_public_file(staging / CHAIN_FILE, ca_chain_pem)
        if tuf_root is not None:
            write_public_file(staging / TUF_ROOT_FILE, tuf_root)
        metadata = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "device_id": device_id,
            "mqtt_url": mqtt_url,
            "api_url": api_url,
            "not_after": _parse_certificate(
                certificate_pem, CERT_FILE
            ).not_valid_after_utc.isoformat(),
            "private_key": KEY_FILE,
            "certificate": CERT_FILE,
            "ca_chain": CHAIN_FILE,
            "tuf_root": TUF_ROOT_FILE if tuf_root is not None else None,
        }
        write_public_file(
            staging / METADATA_FILE, (json.dumps(metadata, indent=2) + "\n").encode("utf-8")
        )
        read_bundle(staging)
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
    return read_bundle(directory)


def renewal_due(certificate: x509.Certificate, now: datetime, fraction: float = 2 / 3) -> bool:
    """True once ``fraction`` of the certificate's lifetime has passed (by default two
    thirds: four months before a one-year certificate expires), so the agent renews
    early enough to retry for weeks if the server is unreachable."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return now >= start + (end - start) * fraction


def _read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise BundleError(f"{path}: {size} bytes is too large for a credentials file")
        return path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing from the credentials bundle") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read: {exc.strerror}") from None


def _parse_certificate(pem: bytes, name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise BundleError(f"{name}: not a PEM certificate") from None


def read_bundle(directory: Path) -> CredentialsBundle:
    """Load and check a credentials bundle.

    If ``directory`` is missing but an interrupted :func:`write_bundle` left the previous
    bundle beside it, that bundle is moved back first.

    Checks: ``bundle.json`` names this format and version; the key file is not
    readable by group or others; key and certificate form a pair; the certificate's CN
    is the bundle's device id; the chain holds at least one certificate. Expiry is *not*
    judged here (the agent renews a certificate close to expiry, and needs to read it to
    do so): compare ``not_after`` with the clock.

    Raises:
        BundleError: with the file and the reason.
    """
    directory = Path(directory)
    previous = directory.with_name(f".{directory.name}.prev")
    if not directory.exists() and previous.is_dir():
        # A replacement was cut between its two renames: the previous bundle is whole.
        os.rename(previous, directory)
    meta_path = directory / METADATA_FILE
    try:
        meta = json.loads(_read_limited(meta_path))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"{meta_path}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
        raise BundleError(
            f"{meta_path}: not an {BUNDLE_FORMAT} version {BUNDLE_VERSION} bundle "
            f"(format={meta.get('format')!r}, version={meta.get('version')!r})"
        )
    fields: dict[str, str] = {}
    for field in ("device_id", "mqtt_url", "api_url"):
        value = meta.get(field)
        if not isinstance(value, str) or not value:
            raise BundleError(f"{meta_path}: field {field!r} must be a non-empty string")
        fields[field] = value
    device_id = fields["device_id"]

    key_path = directory / KEY_FILE
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except FileNotFoundError:
        raise BundleError(f"{key_path}: missing from the credentials bundle") from None
    if mode & 0o077:
        raise BundleError(
            f"{key_path}: private key is accessible by group or others (mode {mode:04o}); "
            "run chmod 600 on it"
        )
    try:
        key = serialization.load_pem_private_key(_read_limited(key_path), password=None)
    except (ValueError, TypeError):
        raise BundleError(f"{key_path}: not an unencrypted PEM private key") from None

    cert = _parse_certificate(_read_limited(directory / CERT_FILE), str(directory / CERT_FILE))
    if cert.public_key() != key.public_key():
        raise BundleError(f"{directory / CERT_FILE}: does not match the private key")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != device_id:
        raise BundleError(
            f"{directory / CERT_FILE}: subject is {cert.subject.rfc4514_string()!r}, "
            f"not CN={device_id}"
        )
    chain_path = directory / CHAIN_FILE
    try:
        chain = tuple(x509.load_pem_x509_certificates(_read_limited(chain_path)))
    except ValueError:
        raise BundleError(f"{chain_path}: not a PEM list of certificates") from None

    tuf_root_path: Path | None = None
    if meta.get("tuf_root"):
        tuf_root_path = directory / TUF_ROOT_FILE
        if not tuf_root_path.is_file():
            raise BundleError(f"{tuf_root_path}: named by {METADATA_FILE} but missing")
    return CredentialsBundle(
        directory=directory,
        device_id=device_id,
        mqtt_url=fields["mqtt_url"],
        api_url=fields["api_url"],
        not_after=cert.not_valid_after_utc.astimezone(UTC),
        certificate=cert,
        ca_chain=chain,
        tuf_root_path=tuf_root_path,
    )
