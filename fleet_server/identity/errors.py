"""Errors of the fleet CA. Each carries a stable reason code and a message for people.

The two that reach the API belong to the server's error family as well
(:mod:`fleet_server.errors`): a refused CSR is a security refusal (422 ``csr_rejected``,
``details.reason``), an unusable CA store makes provisioning unavailable (503
``provisioning_unavailable``).
"""

from __future__ import annotations

from enum import StrEnum

from fleet_server.errors import SecurityRefusalError, TransientError


class IdentityError(Exception):
    """Base class: something about a certificate, a CSR or the CA store is wrong."""


class CsrReason(StrEnum):
    """Why a certificate signing request was refused (stable codes, safe to count)."""

    MALFORMED = "malformed"
    OVERSIZE = "oversize"
    BAD_SIGNATURE = "bad_signature"
    WEAK_SIGNATURE = "weak_signature"
    INVALID_DEVICE_ID = "invalid_device_id"
    RESERVED_NAME = "reserved_name"
    SUBJECT_MISMATCH = "subject_mismatch"
    UNEXPECTED_SAN = "unexpected_san"
    CA_REQUESTED = "ca_requested"
    UNEXPECTED_EXTENSION = "unexpected_extension"
    WEAK_KEY = "weak_key"


class CsrRejectedError(IdentityError, SecurityRefusalError):
    """A CSR may not become a certificate; ``reason`` says why in one stable word."""

    def __init__(self, reason: CsrReason, detail: str) -> None:
        super().__init__(
            "csr_rejected", f"CSR rejected ({reason.value}): {detail}", {"reason": reason.value}
        )
        self.reason = reason
        self.detail = detail


class RenewalRefusedError(IdentityError):
    """The certificate presented for renewal is not one this CA can renew (another CA,
    expired, revoked, or for another device)."""


class CaStoreError(IdentityError, TransientError):
    """The CA directory is missing, incomplete, or would be overwritten."""

    def __init__(self, message: str) -> None:
        super().__init__("provisioning_unavailable", message)


class UnknownCertificateError(IdentityError):
    """No issued certificate matches the serial or device id given."""
