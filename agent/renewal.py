"""Certificate renewal on the device: a new key and CSR out, the new certificate in.

The agent renews once :func:`agent.credentials.renewal_due` says so (two thirds of the
certificate's lifetime). It makes a new key *on the device*, keeps it as a pending key
(mode 0600, next to the bundle, reused until an answer arrives so retries do not pile up
keys), and sends the CSR as a ``certificate_request`` event over its current, still
valid connection: the broker has authenticated it, so no other channel is needed. The
server answers with an ``install_certificate`` command; :meth:`CertificateRenewal.install`
checks the certificate belongs to the pending key and this device, then replaces the
bundle as a whole (:func:`agent.credentials.write_bundle`), so a power cut leaves either
the old or the new credentials, never a mix. The caller then reconnects with the new
bundle.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.credentials import (
    BundleError,
    CredentialsBundle,
    make_device_key_and_csr,
    read_bundle,
    renewal_due,
    write_bundle,
    write_private_file,
)
from protocol import CertificateRequest, InstallCertificate


class CertificateRenewal:
    """Renewal state of one credentials bundle directory."""

    def __init__(self, bundle_dir: Path, fraction: float = 2 / 3) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.fraction = fraction
        self.pending_key_path = self.bundle_dir.with_name(f".{self.bundle_dir.name}.pending.key")

    def bundle(self) -> CredentialsBundle:
        """The current bundle (checked by :func:`read_bundle`)."""
        return read_bundle(self.bundle_dir)

    def due(self, now: datetime) -> bool:
        """True when the current certificate should be renewed."""
        return renewal_due(self.bundle().certificate, now, self.fraction)

    def csr(self) -> str:
        """A PEM CSR for the pending key (made now if there is none).

        Only the CSR leaves the device; the pending key stays in a 0600 file.
        """
        device_id = self.bundle().device_id
        if self.pending_key_path.exists():
            key = serialization.load_pem_private_key(self.pending_key_path.read_bytes(), None)
            return _csr_for(key, device_id).decode()
        made = make_device_key_and_csr(device_id)
        write_private_file(self.pending_key_path, made.key_pem)
        return made.csr_pem.decode()

    def request(self, *, boot_id: str, seq: int, now: float) -> CertificateRequest:
        """The ``certificate_request`` event for the pending key."""
        device_id = self.bundle().device_id
        return CertificateRequest(
            device_id=device_id, boot_id=boot_id, seq=seq, ts=now, csr=self.csr()
        )

    def install(self, command: InstallCertificate) -> CredentialsBundle:
        """Swap in the certificate of an ``install_certificate`` command (see
        :meth:`install_pem`)."""
        return self.install_pem(command.certificate, command.ca_chain)

    def install_pem(self, certificate: str, ca_chain: str) -> CredentialsBundle:
        """Swap in the renewed certificate with the pending key, atomically.

        Raises:
            BundleError: no renewal is pending, or the certificate is not for the pending
                key or this device (the current bundle is left untouched).
        """
        current = self.bundle()
        if not self.pending_key_path.exists():
            raise BundleError("no certificate renewal is pending on this device")
        key_pem = self.pending_key_path.read_bytes()
        try:
            cert = x509.load_pem_x509_certificate(certificate.encode())
            x509.load_pem_x509_certificates(ca_chain.encode())
        except ValueError:
            raise BundleError("install_certificate: not PEM") from None
        key = serialization.load_pem_private_key(key_pem, None)
        if cert.public_key() != key.public_key():
            raise BundleError("install_certificate: the certificate is not for the pending key")
        tuf_root = current.tuf_root_path.read_bytes() if current.tuf_root_path else None
        bundle = write_bundle(
            self.bundle_dir,
            device_id=current.device_id,
            key_pem=key_pem,
            certificate_pem=certificate.encode(),
            ca_chain_pem=ca_chain.encode(),
            mqtt_url=current.mqtt_url,
            api_url=current.api_url,
            tuf_root=tuf_root,
        )
        os.unlink(self.pending_key_path)
        return bundle


def _csr_for(key: object, device_id: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BundleError("the pending key is not an EC key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Edgefleet"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)
