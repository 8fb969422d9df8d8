"""Certificates and revocation lists of the fleet CA (pure: keys, names and ``now`` in,
certificates out; nothing here reads a clock or a file).

Hierarchy::

    Edgefleet Root CA      offline, 10 years, CA path length 1
      └─ Issuing CA        online on the fleet server, 5 years, path length 0
           ├─ device certificates  CN=<device id>, O=Edgefleet, clientAuth, 1 year
           ├─ service certificates CN=svc-<name> (svc-ingest...), clientAuth
           └─ server certificates  SAN = DNS/IP of the broker and API, serverAuth

Devices, services and the broker all trust the same chain (``ca-chain.pem``), so one
file configures both directions of mutual TLS. Server certificates carry ``serverAuth``
only and device certificates ``clientAuth`` only, so neither can stand in for the other.
Every key is ECDSA P-256 unless the caller brings another; serial numbers are random
159-bit integers; a certificate never outlives its issuer.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet_server.identity.csr_policy import (
    RESERVED_PREFIX,
    CertificatePublicKey,
    check_common_name,
    check_device_csr,
    check_public_key,
)
from fleet_server.identity.errors import IdentityError, RenewalRefusedError
from protocol.topics import is_valid_device_id

ORGANIZATION = "Edgefleet"
ROOT_VALIDITY = timedelta(days=3650)
ISSUING_VALIDITY = timedelta(days=5 * 365)
DEVICE_VALIDITY = timedelta(days=365)
SERVER_VALIDITY = timedelta(days=397)
CRL_VALIDITY = timedelta(days=7)
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before ``now``, so a device whose clock is a little
behind still accepts a certificate issued a moment ago."""


@dataclass(frozen=True, slots=True)
class Issuer:
    """A CA certificate and its private key, able to sign certificates and CRLs."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One revoked certificate as listed in the CRL."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (CA, service and server keys; devices make their own)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PEM PKCS#8, encrypted with the best available scheme when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certificate_pem(*certificates: x509.Certificate) -> bytes:
    """Concatenated PEM of ``certificates`` (a chain file when given several)."""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def common_name(certificate: x509.Certificate) -> str:
    """The single CN of a certificate's subject (device id, service name, host)."""
    cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise IdentityError(f"certificate {certificate.serial_number:x} has {len(cns)} CNs")
    return str(cns[0].value)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def _window(
    now: datetime, validity: timedelta, issuer: x509.Certificate | None
) -> tuple[datetime, datetime]:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if validity <= timedelta(0):
        raise ValueError(f"validity must be positive, not {validity}")
    not_before = now - CLOCK_SKEW
    not_after = now + validity
    if issuer is not None:
        not_after = min(not_after, issuer.not_valid_after_utc)
        if not_after <= now:
            raise IdentityError(
                f"the issuing CA {common_name(issuer)!r} expired on "
                f"{issuer.not_valid_after_utc:%Y-%m-%d}; it cannot issue any more"
            )
    return not_before, not_after


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage(public_key: CertificatePublicKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_root_ca(
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    name: str = "Edgefleet Root CA",
    validity: timedelta = ROOT_VALIDITY,
) -> x509.Certificate:
    """A self-signed root CA that may sign one level of CA below it (the issuing CA).

    Its key is meant to stay offline: it is used only to sign issuing CAs.
    """
    not_before, not_after = _window(now, validity, None)
    subject = _name(name)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def make_issuing_ca(
    public_key: ec.EllipticCurvePublicKey,
    root: Issuer,
    now: datetime,
    *,
    name: str = "Edgefleet Issuing CA",
    validity: timedelta = ISSUING_VALIDITY,
) -> x509.Certificate:
    """The online CA certificate, signed by the root; it may sign leaf certificates only
    (path length 0)."""
    not_before, not_after = _window(now, validity, root.certificate)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(root.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), False
        )
        .sign(root.key, hashes.SHA256())
    )


def _leaf(
    public_key: CertificatePublicKey,
    cn: str,
    issuer: Issuer,
    now: datetime,
    validity: timedelta,
    usage: x509.ObjectIdentifier,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    not_before, not_after = _window(now, validity, issuer.certificate)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def issue_device_certificate(
    public_key: CertificatePublicKey,
    device_id: str,
    issuer: Issuer,
    now: datetime,
    validity: timedelta = DEVICE_VALIDITY,
) -> x509.Certificate:
    """A device's client certificate: ``CN=<device_id>, O=Edgefleet``, CA:false,
    digitalSignature, clientAuth, valid from ``now`` (minus clock skew) for ``validity``
    but never past the issuer's own expiry.

    Raises:
        CsrRejectedError: the device id is invalid or reserved, or the key is weak.
    """
    check_common_name(device_id)
    check_public_key(public_key)
    return _leaf(public_key, device_id, issuer, now, validity, ExtendedKeyUsageOID.CLIENT_AUTH)


def issue_from_csr(
    csr: x509.CertificateSigningRequest,
    device_id: str,
    issuer: Issuer,
    now: datetime,
    validity: timedelta = DEVICE_VALIDITY,
) -> x509.Certificate:
    """Check ``csr`` with :func:`~fleet_server.identity.csr_policy.check_device_csr` and
    certify its key for ``device_id``.

    Raises:
        CsrRejectedError: the CSR is refused; ``reason`` says why.
    """
    key = check_device_csr(csr, device_id)
    return issue_device_certificate(key, device_id, issuer, now, validity)


def issue_service_certificate(
    public_key: CertificatePublicKey,
    service: str,
    issuer: Issuer,
    now: datetime,
    validity: timedelta = DEVICE_VALIDITY,
) -> x509.Certificate:
    """A fleet service's client certificate (``CN=svc-...``), e.g. ``svc-ingest``, whose
    broker rights come from its own ``user`` section in the ACL file.

    Raises:
        ValueError: the name does not start with ``svc-`` or is not a valid identity.
    """
    if not service.startswith(RESERVED_PREFIX) or not is_valid_device_id(service):
        raise ValueError(
            f"service identity {service!r} must start with {RESERVED_PREFIX!r} and use "
            "letters, digits, '.', '_' or '-' (at most 64 characters)"
        )
    check_public_key(public_key)
    return _leaf(public_key, service, issuer, now, validity, ExtendedKeyUsageOID.CLIENT_AUTH)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host.rstrip(".")):
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.rstrip(".").lower())


def issue_server_certificate(
    public_key: CertificatePublicKey,
    hosts: Sequence[str],
    issuer: Issuer,
    now: datetime,
    validity: timedelta = SERVER_VALIDITY,
) -> x509.Certificate:
    """A TLS server certificate for the broker and the API (``serverAuth``), naming every
    host and IP address clients use to reach them (e.g. ``localhost``, ``127.0.0.1``).

    Raises:
        ValueError: no hosts, or a host that is neither an IP address nor a DNS name.
    """
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or IP address")
    sans = [_general_name(h) for h in hosts]
    check_public_key(public_key)
    return _leaf(public_key, hosts[0], issuer, now, validity, ExtendedKeyUsageOID.SERVER_AUTH, sans)


def check_renewal(
    presented: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    issuer: Issuer,
    now: datetime,
    revoked_serials: Collection[int],
) -> str:
    """Decide whether ``presented`` (the device's current certificate, as authenticated
    by mutual TLS) may be renewed with the key in ``csr``.

    The current certificate must have been signed by this issuing CA, be inside its
    validity window (an expired certificate needs a new provisioning, not a renewal) and
    not be revoked; the CSR must pass the device CSR policy for the same device id. The
    new key may differ from the old one (key rotation at renewal is encouraged).

    Returns:
        The device id to issue the new certificate for.

    Raises:
        RenewalRefusedError: the presented certificate cannot be renewed.
        CsrRejectedError: the CSR is refused.
    """
    try:
        presented.verify_directly_issued_by(issuer.certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise RenewalRefusedError("the presented certificate was not issued by this CA") from None
    if now < presented.not_valid_before_utc:
        raise RenewalRefusedError("the presented certificate is not valid yet")
    if now >= presented.not_valid_after_utc:
        raise RenewalRefusedError(
            "the presented certificate expired on "
            f"{presented.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; provision the device again"
        )
    if presented.serial_number in revoked_serials:
        raise RenewalRefusedError(
            f"the presented certificate (serial {presented.serial_number:x}) is revoked"
        )
    device_id = common_name(presented)
    if device_id.startswith(RESERVED_PREFIX):
        raise RenewalRefusedError(
            "service certificates are renewed by the operator, not by renewal"
        )
    check_device_csr(csr, device_id)
    return device_id


def build_crl(
    issuer: Issuer,
    revoked: Iterable[RevokedEntry],
    now: datetime,
    number: int,
    validity: timedelta = CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """The issuing CA's CRL listing ``revoked``, valid until ``now + validity``.

    Mosquitto refuses *every* client once the CRL's ``next_update`` has passed, so the
    CRL must be regenerated (``fleet-server ca crl``) well before that and the broker
    reloaded. ``number`` must grow with every CRL (the CRL number extension).
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
        )
    )
    for entry in revoked:
        revoked_cert = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not x509.ReasonFlags.unspecified:
            revoked_cert = revoked_cert.add_extension(x509.CRLReason(entry.reason), False)
        builder = builder.add_revoked_certificate(revoked_cert.build())
    return builder.sign(issuer.key, hashes.SHA256())
