"""Device credentials through the API: factory bundle, CSR certification, revocation on
decommission and by an admin; audited; reserved service names refused."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select

from agent.credentials import make_device_key_and_csr, read_bundle
from fleet_server.api import create_app
from fleet_server.db.models import AuditEntry
from fleet_server.fleetctl.client import EXIT_FORBIDDEN, EXIT_INVALID
from fleet_server.identity import ca_store
from tests.server_fixtures import FakeClock, make_tokens, serve, settings_for

NOW = datetime.fromtimestamp(FakeClock().now, UTC)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("ca")
    ca_store.init_root(base / "root", NOW)
    ca_store.init_issuing(base / "root", base / "issuing", NOW)
    return base / "issuing"


@pytest.fixture
def client(sessions: Any, db_url: str, ca_dir: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = settings_for(
        db_url,
        security={"ca_dir": str(ca_dir), "device_mqtt_url": "mqtts://mqtt.example:8883"},
        api={"base_url": "https://fleet.example"},
    )
    app = create_app(settings, sessions=sessions, clock=FakeClock())
    tokens = make_tokens(sessions)
    with TestClient(app, raise_server_exceptions=False) as c:
        op = {"Authorization": f"Bearer {tokens['operator']}"}
        assert c.post("/api/v1/devices", json={"device_id": "pi-7"}, headers=op).status_code == 201
        yield c, {role: f"Bearer {t}" for role, t in tokens.items()}


def _audit(sessions: Any, action: str) -> list[AuditEntry]:
    with sessions() as s:
        return list(s.execute(select(AuditEntry).where(AuditEntry.action == action)).scalars())


def test_factory_provisioning_returns_a_working_bundle(client, sessions, tmp_path: Path) -> None:
    c, auth = client
    r = c.post("/api/v1/devices/pi-7/provision", headers={"Authorization": auth["operator"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["cache-control"] == "no-store"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="tar")
    bundle = read_bundle(tmp_path / "pi-7")  # checks key/cert match, CN, key mode
    assert bundle.device_id == "pi-7"
    assert bundle.mqtt_url == "mqtts://mqtt.example:8883"
    assert bundle.api_url == "https://fleet.example"
    assert stat.S_IMODE((tmp_path / "pi-7" / "device.key").stat().st_mode) == 0o600
    serial = f"{bundle.certificate.serial_number:x}"
    assert r.headers["x-certificate-serial"] == serial
    (entry,) = _audit(sessions, "device.provision")
    assert entry.target_id == "pi-7"
    assert serial in str(entry.after)
    assert "PRIVATE KEY" not in str(entry.after)


def test_claim_flow_certifies_the_devices_own_key(client, sessions) -> None:
    c, auth = client
    made = make_device_key_and_csr("pi-7")
    r = c.post(
        "/api/v1/devices/pi-7/certificate",
        json={"csr": made.csr_pem.decode()},
        headers={"Authorization": auth["operator"]},
    )
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    key = serialization.load_pem_private_key(made.key_pem, None)
    assert cert.public_key() == key.public_key()
    assert "CN=pi-7" in cert.subject.rfc4514_string().split(",")
    assert "BEGIN CERTIFICATE" in r.json()["ca_chain"]
    assert len(_audit(sessions, "device.certify")) == 1
    # A CSR naming another device is refused with its reason.
    other = make_device_key_and_csr("pi-8")
    bad = c.post(
        "/api/v1/devices/pi-7/certificate",
        json={"csr": other.csr_pem.decode()},
        headers={"Authorization": auth["operator"]},
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "csr_rejected"
    assert bad.json()["error"]["details"]["reason"] == "subject_mismatch"
    junk = c.post(
        "/api/v1/devices/pi-7/certificate",
        json={"csr": "not a csr"},
        headers={"Authorization": auth["operator"]},
    )
    assert junk.json()["error"]["details"]["reason"] == "malformed"


def test_decommission_revokes_and_the_crl_lists_it(client, sessions, ca_dir: Path) -> None:
    c, auth = client
    op = {"Authorization": auth["operator"]}
    serial = c.post("/api/v1/devices/pi-7/provision", headers=op).headers["x-certificate-serial"]
    assert c.post("/api/v1/devices/pi-7/decommission", json={}, headers=op).status_code == 200
    crl = x509.load_pem_x509_crl((ca_dir / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    (entry,) = _audit(sessions, "device.revoke")
    assert serial in str(entry.after)
    # A decommissioned device gets no new credentials.
    again = c.post("/api/v1/devices/pi-7/provision", headers=op)
    assert again.status_code == 409


def test_admin_revokes_without_decommissioning(client, ca_dir: Path) -> None:
    c, auth = client
    op = {"Authorization": auth["operator"]}
    serial = c.post("/api/v1/devices/pi-7/provision", headers=op).headers["x-certificate-serial"]
    assert c.post("/api/v1/devices/pi-7/revoke", json={}, headers=op).status_code == 403
    r = c.post(
        "/api/v1/devices/pi-7/revoke",
        json={"reason": "key_compromise"},
        headers={"Authorization": auth["admin"]},
    )
    assert r.status_code == 200
    assert serial in r.json()["revoked_serials"]
    bad = c.post(
        "/api/v1/devices/pi-7/revoke",
        json={"reason": "boredom"},
        headers={"Authorization": auth["admin"]},
    )
    assert bad.status_code == 422


def test_service_names_cannot_be_registered(client) -> None:
    c, auth = client
    r = c.post(
        "/api/v1/devices",
        json={"device_id": "svc-ingest"},
        headers={"Authorization": auth["operator"]},
    )
    assert r.status_code == 422
    assert "reserved" in r.text


def test_without_a_ca_provisioning_is_unavailable(api) -> None:
    c, tokens, _clock = api
    op = {"Authorization": f"Bearer {tokens['operator']}"}
    assert c.post("/api/v1/devices", json={"device_id": "pi-1"}, headers=op).status_code == 201
    r = c.post("/api/v1/devices/pi-1/provision", headers=op)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "provisioning_unavailable"
    # Decommissioning still works (nothing to revoke here).
    assert c.post("/api/v1/devices/pi-1/decommission", json={}, headers=op).status_code == 200


def _fleetctl(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full.update(env)
    return subprocess.run(
        [str(Path(sys.executable).parent / "fleetctl"), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fleetctl_provision_certify_revoke(sessions, db_url: str, ca_dir: Path, tmp_path) -> None:
    settings = settings_for(
        db_url, security={"ca_dir": str(ca_dir), "device_mqtt_url": "mqtts://mqtt.example"}
    )
    server = serve(create_app(settings, sessions=sessions))
    tokens = make_tokens(sessions)
    try:
        env = {"FLEET_URL": server.url, "FLEET_TOKEN": tokens["operator"]}
        assert _fleetctl(["devices", "import", _csv(tmp_path)], env).returncode == 0
        out = tmp_path / "bundle"
        made = _fleetctl(["device", "provision", "pi-cli", "--out", str(out), "--json"], env)
        assert made.returncode == 0, made.stderr
        assert read_bundle(out).device_id == "pi-cli"
        again = _fleetctl(["device", "provision", "pi-cli", "--out", str(out)], env)
        assert again.returncode == 1
        assert "not an empty directory" in again.stderr
        csr = tmp_path / "pi-cli.csr"
        csr.write_bytes(make_device_key_and_csr("pi-cli").csr_pem)
        cert = tmp_path / "pi-cli.crt"
        certified = _fleetctl(
            ["device", "certify", "pi-cli", "--csr", str(csr), "--out", str(cert)], env
        )
        assert certified.returncode == 0, certified.stderr
        assert x509.load_pem_x509_certificate(cert.read_bytes())
        wrong = tmp_path / "other.csr"
        wrong.write_bytes(make_device_key_and_csr("pi-other").csr_pem)
        refused = _fleetctl(["device", "certify", "pi-cli", "--csr", str(wrong)], env)
        assert refused.returncode == EXIT_INVALID
        assert "csr_rejected" in refused.stderr
        assert "Traceback" not in refused.stderr
        denied = _fleetctl(["device", "revoke", "pi-cli"], env)
        assert denied.returncode == EXIT_FORBIDDEN
        assert "forbidden" in denied.stderr
        revoked = _fleetctl(
            [
                "--token",
                tokens["admin"],
                "device",
                "revoke",
                "pi-cli",
                "--reason",
                "key_compromise",
                "--json",
            ],
            env,
        )
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(made.stdout)["serial"] in json.loads(revoked.stdout)["revoked_serials"]
    finally:
        server.stop()


def _csv(tmp_path: Path) -> str:
    f = tmp_path / "factory.csv"
    f.write_text("device_id,serial\npi-cli,SN-CLI\n")
    return str(f)
