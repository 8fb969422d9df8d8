"""The fleet CA: CSR policy, certificate contents, renewal, revocation, bundles, CLI."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from agent.credentials import (
    BundleError,
    make_device_key_and_csr,
    read_bundle,
    renewal_due,
    write_bundle,
)
from fleet_server.identity import ca_store
from fleet_server.identity.cli import ca_app
from fleet_server.identity.csr_policy import check_device_csr, load_csr
from fleet_server.identity.errors import (
    CaStoreError,
    CsrReason,
    CsrRejectedError,
    RenewalRefusedError,
    UnknownCertificateError,
)
from fleet_server.identity.mosquitto_config import BrokerSettings, render_acl

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
URLS = {"mqtt_url": "mqtts://broker.test:8883", "api_url": "https://api.test"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ca_store.CertificateAuthority:
    base = tmp_path_factory.mktemp("ca")
    ca_store.init_root(base / "root", NOW, passphrase=b"correct horse")
    return ca_store.init_issuing(
        base / "root", base / "issuing", NOW, root_passphrase=b"correct horse"
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _csr(
    cn: str | None = "pi-1",
    *,
    key: object | None = None,
    extensions: list[tuple[x509.ExtensionType, bool]] = (),
    extra_subject: list[x509.NameAttribute] = (),
    algorithm: hashes.HashAlgorithm | None = None,
) -> x509.CertificateSigningRequest:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn is not None else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(attrs + list(extra_subject))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, algorithm or hashes.SHA256())  # type: ignore[arg-type]


def _rejected(csr: x509.CertificateSigningRequest, device_id: str = "pi-1") -> CsrRejectedError:
    with pytest.raises(CsrRejectedError) as info:
        check_device_csr(csr, device_id)
    return info.value


# --- CSR policy ------------------------------------------------------------------------


def test_device_generated_csr_is_accepted_and_certified(ca) -> None:
    made = make_device_key_and_csr("pi-1")
    cert = ca.issue_csr(made.csr_pem, "pi-1", NOW)
    key = serialization.load_pem_private_key(made.key_pem, password=None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pi-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Edgefleet"
    cert.verify_directly_issued_by(ca.issuer.certificate)


def test_csr_for_another_device_is_rejected() -> None:
    error = _rejected(_csr("pi-2"), "pi-1")
    assert error.reason is CsrReason.SUBJECT_MISMATCH
    assert "'pi-2'" in str(error)
    assert "'pi-1'" in str(error)


def test_csr_without_cn_or_with_extra_subject_fields_is_rejected() -> None:
    assert _rejected(_csr(None)).reason is CsrReason.SUBJECT_MISMATCH
    extra = [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admins")]
    error = _rejected(_csr(extra_subject=extra))
    assert error.reason is CsrReason.SUBJECT_MISMATCH
    assert "organizationalUnitName" in str(error)


def test_csr_asking_to_be_a_ca_is_rejected() -> None:
    csr = _csr(extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])
    error = _rejected(csr)
    assert error.reason is CsrReason.CA_REQUESTED
    assert "CA:true" in str(error)


def test_csr_with_subject_alternative_names_is_rejected() -> None:
    san = x509.SubjectAlternativeName([x509.DNSName("broker.example")])
    error = _rejected(_csr(extensions=[(san, False)]))
    assert error.reason is CsrReason.UNEXPECTED_SAN
    assert "broker.example" in str(error)


def test_csr_asking_for_server_auth_is_rejected() -> None:
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert _rejected(_csr(extensions=[(eku, False)])).reason is CsrReason.UNEXPECTED_EXTENSION


def test_csr_with_a_bad_signature_is_rejected() -> None:
    der = bytearray(_csr().public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the signature's last integer: still parses, no longer verifies
    csr = load_csr(bytes(der))
    error = _rejected(csr)
    assert error.reason is CsrReason.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits"),
        (ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
    ],
    ids=["rsa-1024", "secp256k1"],
)
def test_csr_with_a_weak_key_is_rejected(key, fragment) -> None:
    error = _rejected(_csr(key=key))
    assert error.reason is CsrReason.WEAK_KEY
    assert fragment in str(error)


# Made with `openssl req -new -sha1` (its key was discarded): cryptography itself no
# longer signs with SHA-1, but a device's old firmware or OpenSSL may still send one.
SHA1_CSR = b"""-----BEGIN CERTIFICATE REQUEST-----
MIHHMHECAQAwDzENMAsGA1UEAwwEcGktMTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABPXuLzHwcXJfNWqW8B8mibyyt/Z2bjg1+F/Im+bO6KbVXmbbRRYWkNh6Wizi
6fMQNOTuRkq7hT9RRg3h0eXBzeagADAJBgcqhkjOPQQBA0cAMEQCICzsV1Xkg7Ku
xmj7cDtAPz5r3AxIsSvXEQRm61goRbw1AiBLtZAg9O8WRhpZ+xrntaoHhEKkFp09
yPwMVsDC/Cdm+g==
-----END CERTIFICATE REQUEST-----
"""


def test_csr_signed_with_sha1_is_rejected() -> None:
    error = _rejected(load_csr(SHA1_CSR))
    assert error.reason is CsrReason.WEAK_SIGNATURE
    assert "sha1" in str(error)


@pytest.mark.parametrize(
    ("device_id", "reason"),
    [
        ("+", CsrReason.INVALID_DEVICE_ID),
        ("#", CsrReason.INVALID_DEVICE_ID),
        ("a/b", CsrReason.INVALID_DEVICE_ID),
        ("", CsrReason.INVALID_DEVICE_ID),
        ("svc-ingest", CsrReason.RESERVED_NAME),
    ],
)
def test_device_ids_that_could_widen_acls_are_rejected(device_id, reason) -> None:
    assert _rejected(_csr(device_id or "x"), device_id).reason is reason


def test_malformed_and_oversized_csrs_are_rejected() -> None:
    with pytest.raises(CsrRejectedError) as info:
        load_csr(
            b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n"
        )
    assert info.value.reason is CsrReason.MALFORMED
    with pytest.raises(CsrRejectedError) as info:
        load_csr(b"\x30" * 20_000)
    assert info.value.reason is CsrReason.OVERSIZE


# --- certificate contents --------------------------------------------------------------


def test_device_certificate_is_a_client_leaf_valid_one_year(ca) -> None:
    made = make_device_key_and_csr("pi-7")
    cert = ca.issue_csr(made.csr_pem, "pi-7", NOW)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert cert.not_valid_before_utc <= NOW
    assert 0 < cert.serial_number < 2**159


def test_ca_hierarchy_limits_path_length(ca) -> None:
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints).value
    issuing_bc = ca.issuer.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (root_bc.ca, root_bc.path_length) == (True, 1)
    assert (issuing_bc.value.ca, issuing_bc.value.path_length) == (True, 0)
    ca.issuer.certificate.verify_directly_issued_by(ca.root)


def test_certificates_never_outlive_the_issuing_ca(ca) -> None:
    made = make_device_key_and_csr("pi-long")
    cert = ca.issue_csr(made.csr_pem, "pi-long", NOW, validity=timedelta(days=20 * 365))
    assert cert.not_valid_after_utc == ca.issuer.certificate.not_valid_after_utc


def test_server_certificate_names_loopback_and_serves_only(ca, tmp_path) -> None:
    cert = ca.server_certificate(["localhost", "127.0.0.1"], tmp_path / "srv", NOW)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _mode(tmp_path / "srv" / "server.key") == 0o600
    for bad in ("bad host!", "bücher.example", "-lead.example", "a..b"):
        with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
            ca.server_certificate([bad], tmp_path / "srv2", NOW)


def test_service_certificates_must_use_the_reserved_prefix(ca, tmp_path) -> None:
    bundle = ca.service_credentials("svc-ingest", tmp_path / "svc", NOW, **URLS)
    assert bundle.device_id == "svc-ingest"
    with pytest.raises(ValueError, match="must start with 'svc-'"):
        ca.service_credentials("ingest", tmp_path / "bad", NOW, **URLS)


# --- renewal ---------------------------------------------------------------------------


def test_renewal_issues_a_new_certificate_for_the_same_device(ca) -> None:
    old = ca.issue_csr(make_device_key_and_csr("pi-r").csr_pem, "pi-r", NOW)
    new_key = make_device_key_and_csr("pi-r")
    later = NOW + timedelta(days=300)
    new = ca.renew(old.public_bytes(serialization.Encoding.PEM), new_key.csr_pem, later)
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    assert new.not_valid_after_utc == later + timedelta(days=365)


def test_renewal_is_refused_for_expired_revoked_foreign_or_mismatched(ca, tmp_path) -> None:
    old = ca.issue_csr(make_device_key_and_csr("pi-s").csr_pem, "pi-s", NOW)
    pem = old.public_bytes(serialization.Encoding.PEM)
    csr = make_device_key_and_csr("pi-s").csr_pem

    with pytest.raises(RenewalRefusedError, match="expired"):
        ca.renew(pem, csr, NOW + timedelta(days=400))
    with pytest.raises(CsrRejectedError) as info:
        ca.renew(pem, make_device_key_and_csr("pi-other").csr_pem, NOW)
    assert info.value.reason is CsrReason.SUBJECT_MISMATCH

    ca_store.init_root(tmp_path / "root2", NOW)
    other = ca_store.init_issuing(tmp_path / "root2", tmp_path / "iss2", NOW)
    foreign = other.issue_csr(make_device_key_and_csr("pi-s").csr_pem, "pi-s", NOW)
    with pytest.raises(RenewalRefusedError, match="not issued by this CA"):
        ca.renew(foreign.public_bytes(serialization.Encoding.PEM), csr, NOW)

    ca.revoke(NOW, serial=f"{old.serial_number:x}", reason="key_compromise")
    with pytest.raises(RenewalRefusedError, match="revoked"):
        ca.renew(pem, csr, NOW)


# --- revocation ------------------------------------------------------------------------


def test_crl_lists_revoked_serials_and_is_signed_by_the_issuing_ca(ca) -> None:
    keep = ca.issue_csr(make_device_key_and_csr("pi-keep").csr_pem, "pi-keep", NOW)
    first = ca.issue_csr(make_device_key_and_csr("pi-gone").csr_pem, "pi-gone", NOW)
    second = ca.issue_csr(make_device_key_and_csr("pi-gone").csr_pem, "pi-gone", NOW)
    before = x509.load_pem_x509_crl(ca.crl_path.read_bytes())

    revoked = ca.revoke(NOW, cn="pi-gone", reason="cessation_of_operation")
    assert {r.serial_int for r in revoked} == {first.serial_number, second.serial_number}

    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.issuer.key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(first.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(keep.serial_number) is None
    entry = crl.get_revoked_certificate_by_serial_number(first.serial_number)
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.cessation_of_operation
    assert crl.next_update_utc == NOW + timedelta(days=7)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    old_number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > old_number

    assert ca.revoke(NOW, cn="pi-gone") == []  # already revoked: nothing new, no error


def test_revoking_something_never_issued_is_a_clear_error(ca) -> None:
    with pytest.raises(UnknownCertificateError, match="no certificate with CN 'ghost'"):
        ca.revoke(NOW, cn="ghost")
    with pytest.raises(ValueError, match="unknown revocation reason"):
        ca.revoke(NOW, cn="pi-1", reason="because")
    with pytest.raises(ValueError, match="not a hexadecimal number"):
        ca.revoke(NOW, serial="xyz")


def test_serial_may_be_given_as_openssl_prints_it(ca) -> None:
    cert = ca.issue_csr(make_device_key_and_csr("pi-hex").csr_pem, "pi-hex", NOW)
    printed = f"{cert.serial_number:042X}"  # upper case, zero padded, like openssl
    (record,) = ca.revoke(NOW, serial=printed)
    assert record.serial_int == cert.serial_number


def test_crl_can_be_resigned_with_a_fresh_next_update(ca) -> None:
    crl = ca.write_crl(NOW + timedelta(days=6))
    assert crl.next_update_utc == NOW + timedelta(days=13)


# --- the CA on disk --------------------------------------------------------------------


def test_ca_keys_are_private_and_the_root_key_is_encrypted(ca, tmp_path) -> None:
    root_dir = ca.directory.parent / "root"
    assert _mode(root_dir / ca_store.ROOT_KEY) == 0o600
    assert _mode(ca.directory / ca_store.ISSUING_KEY) == 0o600
    assert b"ENCRYPTED" in (root_dir / ca_store.ROOT_KEY).read_bytes()
    with pytest.raises(CaStoreError, match="encrypted; give its passphrase"):
        ca_store.init_issuing(root_dir, tmp_path / "iss", NOW)
    with pytest.raises(CaStoreError, match="passphrase is wrong"):
        ca_store.init_issuing(root_dir, tmp_path / "iss", NOW, root_passphrase=b"nope")


def test_existing_ca_is_never_overwritten(ca) -> None:
    with pytest.raises(CaStoreError, match="refusing to overwrite"):
        ca_store.init_root(ca.directory.parent / "root", NOW)
    with pytest.raises(CaStoreError, match="refusing to overwrite"):
        ca_store.init_issuing(
            ca.directory.parent / "root", ca.directory, NOW, root_passphrase=b"correct horse"
        )


def test_index_records_every_issued_certificate(ca, tmp_path) -> None:
    bundle = ca.provision("pi-indexed", tmp_path / "pi", NOW, **URLS)
    reloaded = ca_store.CertificateAuthority.load(ca.directory)
    (record,) = [r for r in reloaded.records() if r.cn == "pi-indexed"]
    assert record.serial_int == bundle.certificate.serial_number
    assert record.kind == "device"
    assert record.revoked_at is None


# --- the credentials bundle ------------------------------------------------------------


def test_bundle_round_trip(ca, tmp_path) -> None:
    written = ca.provision("pi-b", tmp_path / "pi-b", NOW, tuf_root=b'{"signed": {}}', **URLS)
    read = read_bundle(tmp_path / "pi-b")
    assert read.device_id == "pi-b"
    assert (read.mqtt_url, read.api_url) == (URLS["mqtt_url"], URLS["api_url"])
    assert read.certificate == written.certificate
    assert read.not_after == NOW + timedelta(days=365)
    assert [c.subject for c in read.ca_chain] == [ca.issuer.certificate.subject, ca.root.subject]
    assert read.tuf_root_path is not None
    assert read.tuf_root_path.read_bytes() == b'{"signed": {}}'
    assert _mode(read.key_path) == 0o600
    assert _mode(tmp_path / "pi-b") == 0o700
    meta = json.loads((tmp_path / "pi-b" / "bundle.json").read_text())
    assert meta["format"] == "edgefleet-credentials"
    assert meta["version"] == 1


def test_device_side_bundle_from_a_csr_round_trip(ca, tmp_path) -> None:
    made = make_device_key_and_csr("pi-claim")
    cert = ca.issue_csr(made.csr_pem, "pi-claim", NOW)
    bundle = write_bundle(
        tmp_path / "claim",
        device_id="pi-claim",
        key_pem=made.key_pem,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_chain_pem=ca.chain_pem(),
        **URLS,
    )
    assert bundle.tuf_root_path is None
    assert read_bundle(tmp_path / "claim").certificate.serial_number == cert.serial_number


def test_bundle_with_a_readable_key_is_refused(ca, tmp_path) -> None:
    bundle = ca.provision("pi-m", tmp_path / "pi-m", NOW, **URLS)
    bundle.key_path.chmod(0o644)
    with pytest.raises(BundleError, match="chmod 600"):
        read_bundle(bundle.directory)


def test_bundle_whose_key_does_not_match_its_certificate_is_refused(ca, tmp_path) -> None:
    one = ca.provision("pi-one", tmp_path / "one", NOW, **URLS)
    two = ca.provision("pi-one", tmp_path / "two", NOW, **URLS)
    two.key_path.write_bytes(one.key_path.read_bytes())
    with pytest.raises(BundleError, match="does not match the private key"):
        read_bundle(two.directory)
    with pytest.raises(BundleError, match="not CN=pi-two"):
        write_bundle(
            tmp_path / "three",
            device_id="pi-two",
            key_pem=one.key_path.read_bytes(),
            certificate_pem=one.cert_path.read_bytes(),
            ca_chain_pem=ca.chain_pem(),
            **URLS,
        )


def test_incomplete_or_foreign_bundle_directories_are_refused(tmp_path) -> None:
    with pytest.raises(BundleError, match="missing"):
        read_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text('{"format": "something-else", "version": 1}')
    with pytest.raises(BundleError, match="not an edgefleet-credentials version 1 bundle"):
        read_bundle(tmp_path)
    (tmp_path / "bundle.json").write_text("[1, 2")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(tmp_path)


def test_renewal_replaces_the_bundle_whole_and_survives_a_cut_swap(ca, tmp_path) -> None:
    old = ca.provision("pi-swap", tmp_path / "pi-swap", NOW, **URLS)
    new = ca.provision("pi-swap", tmp_path / "pi-swap", NOW + timedelta(days=250), **URLS)
    assert read_bundle(tmp_path / "pi-swap").certificate == new.certificate
    assert new.certificate != old.certificate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi-swap"]  # no leftovers

    # Power cut between the two renames: only the previous bundle exists, beside.
    (tmp_path / "pi-swap").rename(tmp_path / ".pi-swap.prev")
    recovered = read_bundle(tmp_path / "pi-swap")
    assert recovered.certificate == new.certificate
    assert not (tmp_path / ".pi-swap.prev").exists()


def test_bundle_never_replaces_a_directory_with_other_files(ca, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"not part of a credentials bundle \(notes.txt\)"):
        ca.provision("pi-x", tmp_path, NOW, **URLS)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_renewal_is_due_after_two_thirds_of_the_lifetime(ca) -> None:
    cert = ca.issue_csr(make_device_key_and_csr("pi-due").csr_pem, "pi-due", NOW)
    start = cert.not_valid_before_utc
    lifetime = cert.not_valid_after_utc - start
    assert not renewal_due(cert, NOW)
    assert not renewal_due(cert, start + lifetime * 0.66)
    assert renewal_due(cert, start + lifetime * 0.67)
    assert renewal_due(cert, NOW + timedelta(days=400))


def test_device_key_generation_refuses_an_invalid_id() -> None:
    with pytest.raises(ValueError, match="invalid device id"):
        make_device_key_and_csr("fleet/v1/#")


# --- broker configuration (pure) -------------------------------------------------------


def test_acl_confines_devices_with_patterns_and_grants_services() -> None:
    acl = render_acl(["svc-ingest", "svc-ingest-2"])
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines[:4] == [
        "pattern write fleet/v1/%u/telemetry",
        "pattern write fleet/v1/%u/event",
        "pattern write fleet/v1/%u/presence",
        "pattern read fleet/v1/%u/command",
    ]
    assert lines.count("user svc-ingest-2") == 1
    assert "topic write fleet/v1/+/command" in lines
    # The broker's own counters, for drop alerts; no other '#' grant.
    assert lines.count("topic read $SYS/broker/#") == 2
    grants = [line for line in lines if line != "topic read $SYS/broker/#"]
    assert not [line for line in grants if "#" in line or "readwrite" in line]


def test_broker_settings_reject_bad_values(tmp_path) -> None:
    paths = {
        name: tmp_path / name for name in ("cafile", "certfile", "keyfile", "crlfile", "acl_file")
    }
    with pytest.raises(ValueError, match="must start with 'svc-'"):
        BrokerSettings(**paths, services=["ingest"])
    with pytest.raises(ValueError, match="between 1 and 65535"):
        BrokerSettings(**paths, port=70000)


# --- command line ----------------------------------------------------------------------


def test_cli_end_to_end_with_clear_errors(tmp_path) -> None:
    runner = CliRunner()
    env = {"FLEET_CA_DIR": str(tmp_path / "iss")}

    def run(*args: str):
        return runner.invoke(ca_app, list(args), env=env)

    assert run("init-root", "--out", str(tmp_path / "root")).exit_code == 0
    assert (
        run(
            "init-issuing", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "iss")
        ).exit_code
        == 0
    )
    made = make_device_key_and_csr("pi-cli")
    (tmp_path / "pi.csr").write_bytes(made.csr_pem)

    issued = run("issue", "--csr", str(tmp_path / "pi.csr"), "--device-id", "pi-cli", "--json")
    assert issued.exit_code == 0, issued.output
    assert json.loads(issued.stdout)["device_id"] == "pi-cli"

    wrong = run("issue", "--csr", str(tmp_path / "pi.csr"), "--device-id", "pi-other")
    assert wrong.exit_code == 1
    assert "error: CSR rejected (subject_mismatch)" in wrong.output
    assert "Traceback" not in wrong.output

    provisioned = run(
        "provision", "pi-p", "--out", str(tmp_path / "pi-p"),
        "--mqtt-url", URLS["mqtt_url"], "--api-url", URLS["api_url"], "--json",
    )  # fmt: skip
    assert provisioned.exit_code == 0, provisioned.output
    serial = json.loads(provisioned.stdout)["serial"]
    assert read_bundle(tmp_path / "pi-p").certificate.serial_number == int(serial, 16)

    revoked = run("revoke", "--serial", serial, "--reason", "key_compromise", "--json")
    assert json.loads(revoked.stdout)["revoked"] == [serial]
    crl = x509.load_pem_x509_crl((tmp_path / "iss" / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None

    assert run("server-cert", "--out", str(tmp_path / "srv")).exit_code == 0
    conf = run(
        "mosquitto-config", "--server-dir", str(tmp_path / "srv"), "--out", str(tmp_path / "broker")
    )
    assert conf.exit_code == 0, conf.output
    text = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert f"crlfile {(tmp_path / 'iss' / 'crl.pem').resolve()}" in text
    assert "require_certificate true" in text

    listed = json.loads(run("list", "--json").stdout)["certificates"]
    assert {r["cn"] for r in listed} == {"pi-cli", "pi-p", "localhost"}

    missing = runner.invoke(ca_app, ["list"], env={"FLEET_CA_DIR": str(tmp_path / "nope")})
    assert missing.exit_code == 1
    assert "is not an issuing CA directory" in missing.output
    both = run("revoke", "--serial", serial, "--device", "pi-p")
    assert both.exit_code == 1
    assert "exactly one of --serial or --device" in both.output
