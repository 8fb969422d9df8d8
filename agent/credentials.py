"""Device credentials: the device's own key, its CSR, and the credentials bundle on disk.

A device proves who it is to the broker and the API with a client certificate whose
subject CN is its device id. Where possible the key is generated *on the device*
(:func:`make_device_key_and_csr`) and only the CSR leaves it; the fleet CA answers with a
certificate. The factory flow (``fleet-server ca provision``) generates the key on the
server instead and ships the whole bundle.

The bundle's format (:mod:`protocol.credentials`) is shared with the fleet CA, which
writes it too; this module adds what needs the key material: generating the key and
CSR, and checking that a bundle's key, certificate and device id belong together.

Every file is written atomically (temporary file, fsync, rename), the key with mode 0600
from the moment it exists, and a bundle is replaced as a whole (:func:`write_bundle`), so
a renewal cut by a power loss leaves the previous credentials. :func:`read_bundle`
refuses a bundle whose key is readable by group or others, whose key does not match its
certificate, or whose certificate names another device.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_bundles.files import (
    replace_directory,
    restore_interrupted,
    write_private_file,
    write_public_file,
)
from protocol.credentials import (
    CERT_FILE,
    CHAIN_FILE,
    KEY_FILE,
    MAX_FILE_BYTES,
    METADATA_FILE,
    TUF_ROOT_FILE,
    BundleError,
    CredentialsBundle,
    bundle_files,
    check_replaceable,
    parse_metadata,
)
from protocol.topics import DEVICE_ID_PATTERN, is_valid_device_id

__all__ = [
    "BundleError",
    "CredentialsBundle",
    "DeviceKeyAndCsr",
    "make_device_key_and_csr",
    "read_bundle",
    "renewal_due",
    "write_bundle",
    "write_private_file",
    "write_public_file",
]

ORGANIZATION = "Edgefleet"


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


# --- the bundle ------------------------------------------------------------------------


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
    if directory.exists():
        if not directory.is_dir():
            raise BundleError(f"{directory}: exists and is not a directory")
        check_replaceable(directory, os.listdir(directory))
    certificate = _parse_certificate(certificate_pem, CERT_FILE)
    files = bundle_files(
        device_id=device_id,
        key_pem=key_pem,
        certificate_pem=certificate_pem,
        ca_chain_pem=ca_chain_pem,
        mqtt_url=mqtt_url,
        api_url=api_url,
        not_after=certificate.not_valid_after_utc,
        tuf_root=tuf_root,
    )
    replace_directory(directory, files, check=read_bundle)
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
        if size > MAX_FILE_BYTES:
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
    restore_interrupted(directory)  # a replacement cut between its renames: the old one
    meta_path = directory / METADATA_FILE
    meta = parse_metadata(_read_limited(meta_path), meta_path)
    device_id = meta.device_id

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
    if meta.has_tuf_root:
        tuf_root_path = directory / TUF_ROOT_FILE
        if not tuf_root_path.is_file():
            raise BundleError(f"{tuf_root_path}: named by {METADATA_FILE} but missing")
    return CredentialsBundle(
        directory=directory,
        device_id=device_id,
        mqtt_url=meta.mqtt_url,
        api_url=meta.api_url,
        not_after=cert.not_valid_after_utc.astimezone(UTC),
        certificate=cert,
        ca_chain=chain,
        tuf_root_path=tuf_root_path,
    )
