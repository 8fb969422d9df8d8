"""Device credentials: factory provisioning, CSR certification (claim flow), revocation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from fleet_server.api.deps import context, current_actor, get_session, stamp
from fleet_server.api.errors import ERROR_RESPONSES, ErrorBody
from fleet_server.errors import InvalidInputError
from fleet_server.identity.ca_store import REVOCATION_REASONS
from fleet_server.services import provisioning
from fleet_server.services.audit import Actor

router = APIRouter(prefix="/api/v1/devices", tags=["credentials"], responses=ERROR_RESPONSES)

UNAVAILABLE = {503: {"model": ErrorBody, "description": "no certificate authority configured"}}


class CsrIn(BaseModel):
    """A PEM certificate signing request made on the device (its key stays there)."""

    csr: str = Field(min_length=1, max_length=16384, description="PEM CSR, CN = device id")


class CertificateOut(BaseModel):
    """The issued certificate and the chain the device verifies the fleet with."""

    device_id: str
    serial: str
    not_after: str
    certificate: str
    ca_chain: str


class RevokeIn(BaseModel):
    """Why the certificates are revoked (an X.509 CRL reason)."""

    reason: str = Field(default="unspecified", description=", ".join(REVOCATION_REASONS))


class RevokeOut(BaseModel):
    """Serials revoked by this call (empty when the device had none left)."""

    device_id: str
    revoked_serials: list[str]


@router.post(
    "/{device_id}/provision",
    summary="Factory provisioning: new key + certificate as a credentials bundle (.tar.gz)",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "the credentials bundle"},
        **UNAVAILABLE,
    },
)
def provision(
    *,
    device_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> Response:
    """The key is generated on the server: prefer ``/certificate`` with a CSR where the
    device can make its own key. The archive holds ``<device_id>/`` with the key (0600),
    certificate, CA chain, TUF root and URLs; only the serial is kept in the audit log."""
    ctx = context(request)
    data, issued = provisioning.provision_bundle(
        session,
        provisioning.load_ca(ctx.settings),
        ctx.settings,
        device_id,
        actor=actor,
        **stamp(request),
    )
    return Response(
        data,
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{device_id}-credentials.tar.gz"',
            "X-Certificate-Serial": issued.serial,
            "Cache-Control": "no-store",
        },
    )


@router.post(
    "/{device_id}/certificate",
    response_model=CertificateOut,
    status_code=201,
    summary="Claim flow: certify a CSR made on the device",
    responses=UNAVAILABLE,
)
def certify(
    *,
    device_id: str,
    body: CsrIn,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
) -> dict[str, Any]:
    """Refusals name the reason (``csr_rejected`` with ``details.reason``: bad signature,
    wrong CN, weak key, extra extensions...)."""
    ctx = context(request)
    ca = provisioning.load_ca(ctx.settings)
    issued = provisioning.certify_csr(
        session,
        ca,
        device_id,
        body.csr.encode(),
        actor=actor,
        **stamp(request),
    )
    return {
        "device_id": device_id,
        "serial": issued.serial,
        "not_after": issued.not_after.isoformat(),
        "certificate": issued.certificate_pem.decode(),
        "ca_chain": ca.chain_pem().decode(),
    }


@router.post(
    "/{device_id}/revoke",
    response_model=RevokeOut,
    summary="Revoke every certificate of a device and re-sign the CRL",
    responses=UNAVAILABLE,
)
def revoke(
    *,
    device_id: str,
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    actor: Annotated[Actor, Depends(current_actor)],
    body: RevokeIn | None = None,
) -> dict[str, Any]:
    """The broker refuses the device once it reloads the CRL (``systemctl reload
    mosquitto``); sessions already open last until they end."""
    ctx = context(request)
    ca = provisioning.load_ca(ctx.settings)
    reason = (body or RevokeIn()).reason
    if reason not in REVOCATION_REASONS:
        raise InvalidInputError(
            "validation_error", f"unknown reason {reason!r}", {"allowed": list(REVOCATION_REASONS)}
        )
    serials = provisioning.revoke_registered(
        session,
        ca,
        device_id,
        actor=actor,
        **stamp(request),
        reason=reason,
    )
    return {"device_id": device_id, "revoked_serials": serials}
