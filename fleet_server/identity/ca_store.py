"""The fleet CA on disk: an offline root directory and an online issuing directory.

Root directory (keep it offline: removable media, a vault; needed only to create or
replace an issuing CA)::

    root-ca.key     root private key, mode 0600, optionally passphrase-encrypted
    root-ca.crt     root certificate

Issuing directory (on the fleet server)::

    issuing-ca.key  issuing private key, mode 0600
    issuing-ca.crt  issuing CA certificate, signed by the root
    root-ca.crt     copy of the root certificate
    ca-chain.pem    issuing CA then root: the ``cafile`` of the broker and of every device
    crl.pem         CRL signed by the issuing CA: the broker's ``crlfile``
    index.json      every certificate issued (serial, CN, kind, validity, revocation)
                    and the last CRL number

Every change takes an exclusive ``flock`` on ``.lock`` in the issuing directory, so two
commands (or two API workers on one host) never interleave their index updates. Every
file is replaced atomically. The clock is the caller's: each method takes ``now``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from firmware_bundles.files import replace_directory, write_private_file, write_public_file
from fleet_server.identity import certificates as certs
from fleet_server.identity.csr_policy import load_csr
from fleet_server.identity.errors import CaStoreError, RenewalRefusedError, UnknownCertificateError
from protocol.credentials import (
    TUF_ROOT_FILE,
    BundleError,
    CredentialsBundle,
    bundle_files,
    check_replaceable,
)

ROOT_KEY = "root-ca.key"
ROOT_CERT = "root-ca.crt"
ISSUING_KEY = "issuing-ca.key"
ISSUING_CERT = "issuing-ca.crt"
CHAIN = "ca-chain.pem"
CRL = "crl.pem"
INDEX = "index.json"
SERVER_KEY = "server.key"
SERVER_CERT = "server.crt"

REVOCATION_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
}
"""Reasons an operator may give (``decommissioned`` devices: ``cessation_of_operation``)."""


@dataclass(frozen=True, slots=True)
class IssuedRecord:
    """One line of the index: what was issued, to whom, and whether it is revoked."""

    serial: str  # lower-case hex
    cn: str
    kind: str  # "device" | "service" | "server"
    not_before: str  # ISO 8601, UTC
    not_after: str
    revoked_at: str | None = None
    reason: str | None = None

    @property
    def serial_int(self) -> int:
        """The serial number as an integer."""
        return int(self.serial, 16)


def _load_key(path: Path, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CaStoreError(f"{path}: missing") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise CaStoreError(
            f"{path}: the key is encrypted; give its passphrase"
            if passphrase is None
            else f"{path}: the key is not encrypted; do not give a passphrase"
        ) from None
    except ValueError:
        raise CaStoreError(f"{path}: not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaStoreError(f"{path}: expected an ECDSA key, found {type(key).__name__}")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CaStoreError(f"{path}: missing") from None
    except ValueError:
        raise CaStoreError(f"{path}: not a PEM certificate") from None


def _prepare_empty_dir(directory: Path, marker: str) -> None:
    if (directory / marker).exists():
        raise CaStoreError(
            f"{directory / marker} already exists; refusing to overwrite a CA "
            "(move the directory away first if you really mean to replace it)"
        )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def init_root(
    directory: Path,
    now: datetime,
    *,
    passphrase: bytes | None = None,
    name: str = "Edgefleet Root CA",
    validity: timedelta = certs.ROOT_VALIDITY,
) -> x509.Certificate:
    """Create the root CA (key + self-signed certificate) in an empty ``directory``.

    Raises:
        CaStoreError: a root CA already exists there.
    """
    directory = Path(directory)
    _prepare_empty_dir(directory, ROOT_KEY)
    key = certs.new_private_key()
    cert = certs.make_root_ca(key, now, name=name, validity=validity)
    write_private_file(directory / ROOT_KEY, certs.private_key_pem(key, passphrase))
    write_public_file(directory / ROOT_CERT, certs.certificate_pem(cert))
    return cert


def load_root(directory: Path, passphrase: bytes | None = None) -> certs.Issuer:
    """Load the root CA (for signing an issuing CA)."""
    directory = Path(directory)
    cert = _load_cert(directory / ROOT_CERT)
    key = _load_key(directory / ROOT_KEY, passphrase)
    if cert.public_key() != key.public_key():
        raise CaStoreError(f"{directory}: {ROOT_KEY} does not match {ROOT_CERT}")
    return certs.Issuer(cert, key)


def init_issuing(
    root_dir: Path,
    directory: Path,
    now: datetime,
    *,
    root_passphrase: bytes | None = None,
    name: str = "Edgefleet Issuing CA",
    validity: timedelta = certs.ISSUING_VALIDITY,
    crl_validity: timedelta = certs.CRL_VALIDITY,
) -> CertificateAuthority:
    """Create the online issuing CA in ``directory``, signed by the root in ``root_dir``,
    with its chain file, an empty index and a first (empty) CRL.

    The root directory is read only here; afterwards it can go back offline.

    Raises:
        CaStoreError: the root is missing or unreadable, or an issuing CA already exists.
    """
    root = load_root(Path(root_dir), root_passphrase)
    directory = Path(directory)
    _prepare_empty_dir(directory, ISSUING_KEY)
    key = certs.new_private_key()
    cert = certs.make_issuing_ca(key.public_key(), root, now, name=name, validity=validity)
    write_private_file(directory / ISSUING_KEY, certs.private_key_pem(key))
    write_public_file(directory / ISSUING_CERT, certs.certificate_pem(cert))
    write_public_file(directory / ROOT_CERT, certs.certificate_pem(root.certificate))
    write_public_file(directory / CHAIN, certs.certificate_pem(cert, root.certificate))
    ca = CertificateAuthority(directory, certs.Issuer(cert, key), root.certificate)
    with ca._locked():
        ca._save_index([], crl_number=0)
        ca._write_crl_locked(now, crl_validity)
    return ca


class CertificateAuthority:
    """The online issuing CA: issues, renews and revokes certificates, keeps the CRL.

    Load it with :meth:`load`; every method that changes state takes ``now`` and holds
    the directory lock while it runs.
    """

    def __init__(self, directory: Path, issuer: certs.Issuer, root: x509.Certificate) -> None:
        self.directory = directory
        self.issuer = issuer
        self.root = root

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Open an issuing directory made by :func:`init_issuing`.

        Raises:
            CaStoreError: a file is missing or the key does not match its certificate.
        """
        directory = Path(directory)
        if not (directory / ISSUING_CERT).exists():
            raise CaStoreError(
                f"{directory} is not an issuing CA directory (no {ISSUING_CERT}); "
                "create one with 'ca init-issuing'"
            )
        cert = _load_cert(directory / ISSUING_CERT)
        key = _load_key(directory / ISSUING_KEY)
        if cert.public_key() != key.public_key():
            raise CaStoreError(f"{directory}: {ISSUING_KEY} does not match {ISSUING_CERT}")
        return cls(directory, certs.Issuer(cert, key), _load_cert(directory / ROOT_CERT))

    # --- paths ---------------------------------------------------------------------

    @property
    def chain_path(self) -> Path:
        """``ca-chain.pem``: the broker's ``cafile`` and every client's trust anchor."""
        return self.directory / CHAIN

    @property
    def crl_path(self) -> Path:
        """``crl.pem``: the broker's ``crlfile``."""
        return self.directory / CRL

    def chain_pem(self) -> bytes:
        """Issuing CA then root, PEM."""
        return certs.certificate_pem(self.issuer.certificate, self.root)

    # --- index ---------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load_index(self) -> tuple[list[IssuedRecord], int]:
        path = self.directory / INDEX
        try:
            raw = json.loads(path.read_text())
            records = [IssuedRecord(**r) for r in raw["certificates"]]
            return records, int(raw["crl_number"])
        except FileNotFoundError:
            raise CaStoreError(f"{path}: missing") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CaStoreError(f"{path}: unreadable index ({exc})") from None

    def _save_index(self, records: Sequence[IssuedRecord], crl_number: int) -> None:
        body = {"crl_number": crl_number, "certificates": [asdict(r) for r in records]}
        write_public_file(self.directory / INDEX, (json.dumps(body, indent=1) + "\n").encode())

    def records(self) -> list[IssuedRecord]:
        """Every certificate this CA issued, oldest first."""
        return self._load_index()[0]

    def revoked_serials(self) -> set[int]:
        """Serial numbers of revoked certificates."""
        return {r.serial_int for r in self.records() if r.revoked_at}

    def _record(self, cert: x509.Certificate, kind: str) -> None:
        records, number = self._load_index()
        records.append(
            IssuedRecord(
                serial=f"{cert.serial_number:x}",
                cn=certs.common_name(cert),
                kind=kind,
                not_before=cert.not_valid_before_utc.isoformat(),
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        )
        self._save_index(records, number)

    # --- issuing -------------------------------------------------------------------

    def issue_csr(
        self,
        csr_pem: bytes,
        device_id: str,
        now: datetime,
        validity: timedelta = certs.DEVICE_VALIDITY,
    ) -> x509.Certificate:
        """Certify the key in a device's CSR (the claim flow: the key never left the
        device).

        Raises:
            CsrRejectedError: the CSR is refused; ``reason`` says why.
        """
        cert = certs.issue_from_csr(load_csr(csr_pem), device_id, self.issuer, now, validity)
        with self._locked():
            self._record(cert, "device")
        return cert

    def renew(
        self,
        presented_pem: bytes,
        csr_pem: bytes,
        now: datetime,
        validity: timedelta = certs.DEVICE_VALIDITY,
    ) -> x509.Certificate:
        """A new certificate for the device named by its current, valid, unrevoked
        certificate ``presented_pem`` (what mutual TLS authenticated), for the key in
        ``csr_pem``. The old certificate stays valid until it expires, so a device that
        loses the answer can still retry.

        Raises:
            RenewalRefusedError: the presented certificate cannot be renewed.
            CsrRejectedError: the CSR is refused.
        """
        try:
            presented = x509.load_pem_x509_certificate(presented_pem)
        except ValueError:
            raise RenewalRefusedError("the presented certificate is not PEM") from None
        csr = load_csr(csr_pem)
        with self._locked():
            device_id = certs.check_renewal(
                presented, csr, self.issuer, now, self.revoked_serials()
            )
            cert = certs.issue_from_csr(csr, device_id, self.issuer, now, validity)
            self._record(cert, "device")
        return cert

    def provision(
        self,
        device_id: str,
        out_dir: Path,
        now: datetime,
        *,
        mqtt_url: str,
        api_url: str,
        tuf_root: bytes | None = None,
        validity: timedelta = certs.DEVICE_VALIDITY,
    ) -> CredentialsBundle:
        """Factory provisioning: generate the device key here, issue its certificate
        and write the complete credentials bundle to ``out_dir``.

        Prefer the claim flow (:meth:`issue_csr`) where the device can generate its key.
        """
        key = certs.new_private_key()
        cert = certs.issue_device_certificate(
            key.public_key(), device_id, self.issuer, now, validity
        )
        with self._locked():
            self._record(cert, "device")
        return self._write_bundle(Path(out_dir), key, cert, mqtt_url, api_url, tuf_root)

    def service_credentials(
        self,
        service: str,
        out_dir: Path,
        now: datetime,
        *,
        mqtt_url: str,
        api_url: str,
        validity: timedelta = certs.DEVICE_VALIDITY,
    ) -> CredentialsBundle:
        """Credentials for a fleet service (``svc-ingest``...), in the same bundle format
        as a device's, so the ingest worker loads them with the same reader."""
        key = certs.new_private_key()
        cert = certs.issue_service_certificate(
            key.public_key(), service, self.issuer, now, validity
        )
        with self._locked():
            self._record(cert, "service")
        return self._write_bundle(Path(out_dir), key, cert, mqtt_url, api_url)

    def _write_bundle(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        mqtt_url: str,
        api_url: str,
        tuf_root: bytes | None = None,
    ) -> CredentialsBundle:
        """Write ``key`` and ``cert`` as a credentials bundle (replacing a previous bundle
        there as a whole, refusing a directory with other files); the device or service
        reads it with :func:`agent.credentials.read_bundle`, which checks the pair."""
        if directory.exists():
            if not directory.is_dir():
                raise BundleError(f"{directory}: exists and is not a directory")
            check_replaceable(directory, os.listdir(directory))
        device_id = certs.common_name(cert)
        files = bundle_files(
            device_id=device_id,
            key_pem=certs.private_key_pem(key),
            certificate_pem=certs.certificate_pem(cert),
            ca_chain_pem=self.chain_pem(),
            mqtt_url=mqtt_url,
            api_url=api_url,
            not_after=cert.not_valid_after_utc,
            tuf_root=tuf_root,
        )
        replace_directory(directory, files)
        return CredentialsBundle(
            directory=directory,
            device_id=device_id,
            mqtt_url=mqtt_url,
            api_url=api_url,
            not_after=cert.not_valid_after_utc,
            certificate=cert,
            ca_chain=(self.issuer.certificate, self.root),
            tuf_root_path=directory / TUF_ROOT_FILE if tuf_root is not None else None,
        )

    def server_certificate(
        self,
        hosts: Sequence[str],
        out_dir: Path,
        now: datetime,
        validity: timedelta = certs.SERVER_VALIDITY,
    ) -> x509.Certificate:
        """Write ``server.key`` (0600), ``server.crt`` and ``ca-chain.pem`` to ``out_dir``
        for the broker's or API's TLS listener."""
        key = certs.new_private_key()
        cert = certs.issue_server_certificate(key.public_key(), hosts, self.issuer, now, validity)
        with self._locked():
            self._record(cert, "server")
        out = Path(out_dir)
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(out / SERVER_KEY, certs.private_key_pem(key))
        write_public_file(out / SERVER_CERT, certs.certificate_pem(cert))
        write_public_file(out / CHAIN, self.chain_pem())
        return cert

    # --- revocation ----------------------------------------------------------------

    def revoke(
        self,
        now: datetime,
        *,
        serial: str | None = None,
        cn: str | None = None,
        reason: str = "unspecified",
        crl_validity: timedelta = certs.CRL_VALIDITY,
    ) -> list[IssuedRecord]:
        """Revoke one certificate (by hex ``serial``) or every unrevoked certificate of
        ``cn`` (a device id: decommissioning), then rewrite the CRL.

        Returns:
            The records revoked now (already revoked ones are left as they were).

        Raises:
            UnknownCertificateError: nothing issued matches.
            ValueError: neither or both of ``serial``/``cn``, or an unknown reason.
        """
        if (serial is None) == (cn is None):
            raise ValueError("give exactly one of serial or cn")
        if reason not in REVOCATION_REASONS:
            raise ValueError(
                f"unknown revocation reason {reason!r}; use one of " + ", ".join(REVOCATION_REASONS)
            )
        wanted: int | None = None
        if serial is not None:
            try:
                wanted = int(serial.strip().replace(":", ""), 16)
            except ValueError:
                raise ValueError(f"serial {serial!r} is not a hexadecimal number") from None
        with self._locked():
            records, number = self._load_index()
            matches = [
                i
                for i, r in enumerate(records)
                if (wanted is not None and r.serial_int == wanted)
                or (cn is not None and r.cn == cn)
            ]
            if not matches:
                what = f"serial {serial}" if serial is not None else f"CN {cn!r}"
                raise UnknownCertificateError(f"no certificate with {what} was issued by this CA")
            revoked_now: list[IssuedRecord] = []
            for i in matches:
                if records[i].revoked_at is None:
                    records[i] = IssuedRecord(
                        **{
                            **asdict(records[i]),
                            "revoked_at": now.isoformat(),
                            "reason": reason,
                        }
                    )
                    revoked_now.append(records[i])
            self._save_index(records, number)
            self._write_crl_locked(now, crl_validity)
        return revoked_now

    def write_crl(
        self, now: datetime, validity: timedelta = certs.CRL_VALIDITY
    ) -> x509.CertificateRevocationList:
        """Re-sign the CRL with a fresh ``next_update`` (run it regularly: a broker
        refuses everyone once its CRL has expired)."""
        with self._locked():
            return self._write_crl_locked(now, validity)

    def _write_crl_locked(
        self, now: datetime, validity: timedelta
    ) -> x509.CertificateRevocationList:
        records, number = self._load_index()
        number += 1
        entries = [
            certs.RevokedEntry(
                serial=r.serial_int,
                revoked_at=datetime.fromisoformat(r.revoked_at),
                reason=REVOCATION_REASONS.get(r.reason or "", x509.ReasonFlags.unspecified),
            )
            for r in records
            if r.revoked_at is not None
        ]
        crl = certs.build_crl(self.issuer, entries, now, number, validity)
        write_public_file(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        self._save_index(records, number)
        return crl
