"""Certificate renewal over MQTT: a device's ``certificate_request`` event in, an
``install_certificate`` command out.

Why MQTT and not an HTTPS endpoint: the API runs under uvicorn, which does not pass the
TLS peer certificate to the application (no ASGI TLS extension), so an HTTP route could
not tell which device is calling. The broker already authenticates every device by its
certificate and its ACL lets a device publish only under its own CN, so an event on
``fleet/v1/<id>/event`` *is* authenticated as ``<id>``. The ingest worker, which receives
the event anyway, hands it here after its batch committed and publishes the answer with
its own service identity (services may command every device).

Renewal is refused unless the device is registered and active and the CA holds a
current, unrevoked certificate for it (the one the broker just accepted): an expired or
revoked device must be provisioned again. The CSR goes through the CA's CSR policy.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from fleet_server.db.models import CommandRecord, Device
from fleet_server.identity import certificates as certs
from fleet_server.identity.ca_store import CertificateAuthority
from fleet_server.identity.errors import IdentityError
from fleet_server.services import audit
from fleet_server.services.audit import Actor
from fleet_server.services.commands import SENDER
from fleet_server.services.ingest import Inbound

log = logging.getLogger(__name__)

RENEWAL_ACTOR = Actor("certificate-renewal", "system")
COMMAND_TTL_S = 3600.0
_MARKER = b'"certificate_request"'


class RenewalRefusedError(ValueError):
    """The device may not renew (unknown, decommissioned, no current certificate)."""


@dataclass(frozen=True)
class Outgoing:
    """A command to publish: topic and payload."""

    topic: str
    payload: bytes


def has_current_certificate(ca: CertificateAuthority, device_id: str, now: datetime) -> bool:
    """True when the CA issued ``device_id`` a device certificate that is valid at
    ``now`` and not revoked (what the broker required to let the request through)."""
    for record in ca.records():
        if record.cn != device_id or record.kind != "device" or record.revoked_at:
            continue
        if (
            datetime.fromisoformat(record.not_after)
            > now
            >= datetime.fromisoformat(record.not_before)
        ):
            return True
    return False


def renew(
    session: Session,
    ca: CertificateAuthority,
    request: p.CertificateRequest,
    *,
    now: float,
) -> Outgoing:
    """Issue the renewed certificate and build the ``install_certificate`` command.

    Records the command (status ``pending``; the device acks it) and an audit row.

    Raises:
        RenewalRefusedError: the device may not renew.
        CsrRejectedError: the CSR breaks the CA's policy.
    """
    device_id = request.device_id
    device = session.query(Device).filter(Device.device_id == device_id).one_or_none()
    if device is None or device.status != "active":
        raise RenewalRefusedError(f"device {device_id!r} is not an active registered device")
    at = datetime.fromtimestamp(now, UTC)
    if not has_current_certificate(ca, device_id, at):
        raise RenewalRefusedError(f"device {device_id!r} has no current certificate to renew")
    cert = ca.issue_csr(request.csr.encode(), device_id, at)
    command_id = "cmd-" + uuid.uuid4().hex[:20]
    message = p.InstallCertificate(
        device_id=device_id,
        boot_id=SENDER.boot_id,
        seq=SENDER.next_seq(),
        ts=now,
        id=command_id,
        expires_at=now + COMMAND_TTL_S,
        certificate=certs.certificate_pem(cert).decode(),
        ca_chain=ca.chain_pem().decode(),
    )
    serial = f"{cert.serial_number:x}"
    session.add(
        CommandRecord(
            id=command_id,
            device_key=device.id,
            kind="install_certificate",
            payload={"serial": serial},
            status="pending",
            created_at=now,
            expires_at=now + COMMAND_TTL_S,
            created_by=RENEWAL_ACTOR.label,
            updated_at=now,
            detail="",
        )
    )
    audit.record(
        session,
        RENEWAL_ACTOR,
        "device.renew",
        "device",
        device_id,
        now=now,
        after={"serial": serial, "not_after": cert.not_valid_after_utc.isoformat()},
    )
    return Outgoing(p.topic(device_id, p.Kind.COMMAND), p.encode(message))


class CertificateRenewer:
    """Handles the certificate requests found in an ingested batch (after its commit)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ca: Callable[[], CertificateAuthority],
        clock: Callable[[], float],
    ) -> None:
        self.sessions = sessions
        self.ca = ca
        self.clock = clock
        self.issued = 0
        self.refused = 0

    def handle(self, batch: list[Inbound]) -> list[Outgoing]:
        """The commands to publish for the batch's valid certificate requests; refusals
        are logged and counted, never raised (ingest must go on)."""
        out: list[Outgoing] = []
        for item in batch:
            if _MARKER not in item.payload or not item.topic.endswith("/event"):
                continue
            try:
                msg = p.decode(item.topic, item.payload)
            except p.ProtocolDecodeError:
                continue  # counted by the ingest already
            if not isinstance(msg, p.CertificateRequest):
                continue
            try:
                with self.sessions() as session:
                    out.append(renew(session, self.ca(), msg, now=self.clock()))
                    session.commit()
                self.issued += 1
            except (RenewalRefusedError, IdentityError, OSError) as exc:
                self.refused += 1
                log.warning("certificate renewal refused for %s: %s", msg.device_id, exc)
        return out
