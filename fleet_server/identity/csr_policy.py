"""Which certificate signing requests may become device certificates (pure, no I/O).

The CA never copies anything from a CSR into a certificate except its public key: the
subject, validity and extensions are the CA's own. Refusing CSRs that *ask* for more
(another name, subject alternative names, CA rights, odd extensions, a weak key) is
defence in depth and gives the requester a clear answer instead of a certificate that
silently differs from what it asked for.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.identity.errors import CsrReason, CsrRejectedError
from protocol.topics import DEVICE_ID_PATTERN, is_valid_device_id

MAX_CSR_BYTES = 16 * 1024
"""CSRs arrive over the network; a real one is well under 2 KiB."""

RESERVED_PREFIX = "svc-"
"""Common names starting with this belong to fleet services (``svc-ingest``); a device
can never be given one, so no device certificate can carry a service's broker rights."""

MIN_RSA_BITS = 2048
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_ALLOWED_SUBJECT_OIDS = {NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME}
_WEAK_HASHES = (hashes.MD5, hashes.SHA1)

CertificatePublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM (or DER) CSR received from outside, bounded in size.

    Raises:
        CsrRejectedError: ``oversize`` or ``malformed``.
    """
    if len(data) > MAX_CSR_BYTES:
        raise CsrRejectedError(
            CsrReason.OVERSIZE, f"{len(data)} bytes; a CSR may be at most {MAX_CSR_BYTES}"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CsrRejectedError(CsrReason.MALFORMED, f"not a PKCS#10 CSR ({exc})") from None


def check_public_key(key: object) -> CertificatePublicKey:
    """Accept ECDSA P-256/P-384, Ed25519, or RSA of at least 2048 bits with e=65537.

    Raises:
        CsrRejectedError: ``weak_key`` naming the key type and size.
    """
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ALLOWED_CURVES):
            return key
        raise CsrRejectedError(
            CsrReason.WEAK_KEY, f"EC curve {key.curve.name} is not accepted (use P-256 or P-384)"
        )
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        if key.key_size < MIN_RSA_BITS:
            raise CsrRejectedError(
                CsrReason.WEAK_KEY,
                f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required",
            )
        if numbers.e != 65537:
            raise CsrRejectedError(
                CsrReason.WEAK_KEY, f"RSA public exponent {numbers.e} is not 65537"
            )
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CsrRejectedError(
        CsrReason.WEAK_KEY,
        f"{type(key).__name__} keys are not accepted (use ECDSA P-256, P-384, Ed25519 or RSA)",
    )


def check_common_name(name: str) -> None:
    """A device id usable as a certificate CN, a topic segment and a broker username.

    Raises:
        CsrRejectedError: ``invalid_device_id`` or ``reserved_name``.
    """
    if not is_valid_device_id(name):
        raise CsrRejectedError(
            CsrReason.INVALID_DEVICE_ID,
            f"device id {name[:80]!r} does not match {DEVICE_ID_PATTERN}",
        )
    if name.lower().startswith(RESERVED_PREFIX):
        raise CsrRejectedError(
            CsrReason.RESERVED_NAME,
            f"device id {name!r} starts with {RESERVED_PREFIX!r}, reserved for fleet services",
        )


def _check_subject(csr: x509.CertificateSigningRequest, device_id: str) -> None:
    subject = csr.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CsrRejectedError(
            CsrReason.SUBJECT_MISMATCH,
            f"subject {subject.rfc4514_string()!r} must hold exactly one CN, the device id",
        )
    if cns[0].value != device_id:
        raise CsrRejectedError(
            CsrReason.SUBJECT_MISMATCH,
            f"subject CN is {str(cns[0].value)[:80]!r} but the request is for device {device_id!r}",
        )
    for attribute in subject:
        if attribute.oid not in _ALLOWED_SUBJECT_OIDS:
            raise CsrRejectedError(
                CsrReason.SUBJECT_MISMATCH,
                f"subject attribute {attribute.oid._name} is not accepted (only CN and O)",
            )


def _check_extensions(csr: x509.CertificateSigningRequest) -> None:
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise CsrRejectedError(CsrReason.MALFORMED, f"unreadable extension ({exc})") from None
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            names = ", ".join(str(n.value) for n in value)[:200]
            raise CsrRejectedError(
                CsrReason.UNEXPECTED_SAN,
                f"subject alternative names are not issued to devices (asked for {names})",
            )
        if isinstance(value, x509.BasicConstraints):
            if value.ca:
                raise CsrRejectedError(CsrReason.CA_REQUESTED, "the CSR asks for CA:true")
            continue
        if isinstance(value, x509.KeyUsage):
            if value.key_cert_sign or value.crl_sign:
                raise CsrRejectedError(
                    CsrReason.CA_REQUESTED, "the CSR asks for certificate or CRL signing"
                )
            continue
        if isinstance(value, x509.ExtendedKeyUsage):
            extra = [oid for oid in value if oid != ExtendedKeyUsageOID.CLIENT_AUTH]
            if extra:
                raise CsrRejectedError(
                    CsrReason.UNEXPECTED_EXTENSION,
                    "devices get clientAuth only; the CSR asks for "
                    + ", ".join(oid._name for oid in extra),
                )
            continue
        raise CsrRejectedError(
            CsrReason.UNEXPECTED_EXTENSION,
            f"extension {ext.oid._name} ({ext.oid.dotted_string}) is not accepted in a CSR",
        )


def check_device_csr(csr: x509.CertificateSigningRequest, device_id: str) -> CertificatePublicKey:
    """Decide whether ``csr`` may become the certificate of ``device_id``.

    Checks, in order: the device id is valid and not reserved; the CSR's self-signature
    verifies (the requester holds the private key) with a hash stronger than SHA-1; the
    key is strong enough; the subject is exactly ``CN=<device_id>`` (plus an optional
    ``O``); no subject alternative names, no CA rights, no extended usage other than
    ``clientAuth``, no other extensions.

    Returns:
        The public key to certify.

    Raises:
        CsrRejectedError: with the first failed check's reason.
    """
    check_common_name(device_id)
    try:
        signature_ok = csr.is_signature_valid
        algorithm = csr.signature_hash_algorithm
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CsrRejectedError(
            CsrReason.MALFORMED, f"unsupported key or signature algorithm ({exc})"
        ) from None
    # Checked first: cryptography refuses to verify SHA-1 signatures at all, and "weak
    # hash" is the more useful answer than "bad signature".
    if isinstance(algorithm, _WEAK_HASHES):
        raise CsrRejectedError(
            CsrReason.WEAK_SIGNATURE, f"CSR signed with {algorithm.name}; use SHA-256 or better"
        )
    if not signature_ok:
        raise CsrRejectedError(
            CsrReason.BAD_SIGNATURE,
            "the CSR's signature does not verify with its own public key",
        )
    key = check_public_key(public_key)
    _check_subject(csr, device_id)
    _check_extensions(csr)
    return key
