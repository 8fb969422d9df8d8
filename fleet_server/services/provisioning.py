"""Device credentials through the API: factory provisioning, CSR certification, revocation.

The CA itself is :class:`fleet_server.identity.ca_store.CertificateAuthority`; this module
adds what the fleet needs around it: the device must be registered and active, the
bundle carries the fleet's URLs and TUF root, every action is audited (serial numbers and
expiry, never key material), and decommissioning revokes the device's certificates.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy.orm import Session

from fleet_server.config import Settings
from fleet_server.errors import ConflictError, TransientError
from fleet_server.identity import certificates as certs
from fleet_server.identity.ca_store import CertificateAuthority
from fleet_server.identity.errors import UnknownCertificateError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.registry import get_device

DECOMMISSION_REASON = "cessation_of_operation"


class ProvisioningUnavailableError(TransientError):
    """No CA (``security.ca_dir``) or no device broker URL is configured, so credentials
    cannot be issued: 503 ``provisioning_unavailable``."""

    def __init__(self, message: str) -> None:
        super().__init__("provisioning_unavailable", message)


@dataclass(frozen=True)
class Issued:
    """What was issued: the certificate's serial (hex) and expiry, and the PEM."""

    serial: str
    not_after: datetime
    certificate_pem: bytes


def load_ca(settings: Settings) -> CertificateAuthority:
    """The configured issuing CA.

    Raises:
        ProvisioningUnavailableError: ``security.ca_dir`` is not set.
        CaStoreError: the directory is not a usable CA.
    """
    if settings.security.ca_dir is None:
        raise ProvisioningUnavailableError(
            "no certificate authority configured; set [security] ca_dir"
        )
    return CertificateAuthority.load(settings.security.ca_dir)


def _active(session: Session, device_id: str) -> None:
    device = get_device(session, device_id)
    if device.status != "active":
        raise ConflictError("conflict", f"device {device_id!r} is {device.status}")


def _urls(settings: Settings) -> tuple[str, str]:
    mqtt = settings.security.device_mqtt_url or settings.mqtt.url
    if not mqtt:
        raise ProvisioningUnavailableError(
            "no broker URL for devices; set [security] device_mqtt_url or [mqtt] url"
        )
    return mqtt, settings.public_base_url


def _issued(pem: bytes) -> Issued:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return Issued(f"{cert.serial_number:x}", cert.not_valid_after_utc, pem)


def provision_bundle(
    session: Session,
    ca: CertificateAuthority,
    settings: Settings,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> tuple[bytes, Issued]:
    """Factory flow: a new key and certificate for a registered, active device, as a
    ``.tar.gz`` of the credentials bundle directory ``<device_id>/`` (key mode 0600).
    Audited (serial and expiry only) and committed.

    Raises:
        NotFoundError, ConflictError: unknown or decommissioned device.
        ProvisioningUnavailableError: no device broker URL configured.
    """
    _active(session, device_id)
    mqtt_url, api_url = _urls(settings)
    tuf_root = settings.security.tuf_root.read_bytes() if settings.security.tuf_root else None
    with tempfile.TemporaryDirectory(prefix="provision-") as tmp:
        out = Path(tmp) / device_id
        bundle = ca.provision(
            device_id,
            out,
            datetime.fromtimestamp(now, UTC),
            mqtt_url=mqtt_url,
            api_url=api_url,
            tuf_root=tuf_root,
        )
        issued = _issued(bundle.certificate.public_bytes(serialization.Encoding.PEM))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(out, arcname=device_id)
    _audit(session, actor, "device.provision", device_id, issued, now, request_id)
    session.commit()
    return buffer.getvalue(), issued


def certify_csr(
    session: Session,
    ca: CertificateAuthority,
    device_id: str,
    csr_pem: bytes,
    *,
    actor: Actor,
    now: float,
    request_id: str | None = None,
) -> Issued:
    """Claim flow: certify the key in the device's CSR (the key never left the device);
    audited and committed.

    Raises:
        NotFoundError, ConflictError: unknown or decommissioned device.
        CsrRejectedError: the CSR is refused (``reason`` says why).
    """
    _active(session, device_id)
    cert = ca.issue_csr(csr_pem, device_id, datetime.fromtimestamp(now, UTC))
    issued = _issued(certs.certificate_pem(cert))
    _audit(session, actor, "device.certify", device_id, issued, now, request_id)
    session.commit()
    return issued


def revoke_device(
    session: Session,
    ca: CertificateAuthority,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "unspecified",
    request_id: str | None = None,
) -> list[str]:
    """Revoke every unrevoked certificate of ``device_id`` and re-sign the CRL; return
    the serials revoked now (empty when it had none). Reload the broker afterwards.

    Raises:
        ValueError: unknown revocation reason.
    """
    try:
        records = ca.revoke(datetime.fromtimestamp(now, UTC), cn=device_id, reason=reason)
    except UnknownCertificateError:
        records = []
    serials = [r.serial for r in records]
    audit.record(
        session,
        actor,
        "device.revoke",
        "device",
        device_id,
        now=now,
        after={"revoked_serials": serials, "reason": reason},
        request_id=request_id,
    )
    return serials


def revoke_registered(
    session: Session,
    ca: CertificateAuthority,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "unspecified",
    request_id: str | None = None,
) -> list[str]:
    """Revoke every certificate of registered device ``device_id`` (404 when unknown),
    re-sign the CRL, audit and commit; return the serials revoked now."""
    get_device(session, device_id)
    serials = revoke_device(
        session, ca, device_id, actor=actor, now=now, reason=reason, request_id=request_id
    )
    session.commit()
    return serials


def _audit(
    session: Session,
    actor: Actor,
    action: str,
    device_id: str,
    issued: Issued,
    now: float,
    request_id: str | None,
) -> None:
    audit.record(
        session,
        actor,
        action,
        "device",
        device_id,
        now=now,
        after={"serial": issued.serial, "not_after": issued.not_after.isoformat()},
        request_id=request_id,
    )
