"""Taking a device out of service: the registry change and the certificate revocation
in one transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from fleet_server.config import Settings
from fleet_server.db.models import Device
from fleet_server.services import provisioning, registry
from fleet_server.services.audit import Actor


def decommission_and_revoke(
    session: Session,
    settings: Settings,
    device_id: str,
    *,
    actor: Actor,
    now: float,
    reason: str = "",
    request_id: str | None = None,
) -> Device:
    """Decommission ``device_id`` (its messages are rejected from now on, its history
    stays) and, when this server runs the CA, revoke its certificates; audit, commit."""
    device = registry.decommission_device(
        session, device_id, actor=actor, now=now, reason=reason, request_id=request_id
    )
    if settings.security.ca_dir is not None:
        provisioning.revoke_device(
            session,
            provisioning.load_ca(settings),
            device_id,
            actor=actor,
            now=now,
            reason=provisioning.DECOMMISSION_REASON,
            request_id=request_id,
        )
    session.commit()
    return device
