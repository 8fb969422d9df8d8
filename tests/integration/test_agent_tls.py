"""Mutual TLS: the agent connects with its per-device client certificate; the broker's ACL
(identity from the certificate) confines it to its own topics; no certificate, no link."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from protocol import Telemetry, decode
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import (
    RUN_AS_ME,
    CountingCollector,
    RunningAgent,
    agent_config,
)

pytestmark = pytest.mark.mosquitto


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class Pki:
    """A throwaway CA issuing the broker's and the devices' certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("edgefleet test CA"))
            .issuer_name(_name("edgefleet test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return Pki(directory)


@pytest.fixture
def tls_broker(
    mosquitto_factory: Callable[..., MosquittoBroker], pki: Pki, tmp_path: Path
) -> MosquittoBroker:
    cert, key = pki.issue("broker", server=True)
    acl = tmp_path / "acl"
    acl.write_text("user ingest\ntopic read fleet/v1/#\n\npattern readwrite fleet/v1/%u/#\n")
    config = RUN_AS_ME + (
        "listener {port} 127.0.0.1\n"
        f"cafile {pki.ca_path}\ncertfile {cert}\nkeyfile {key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        f"allow_anonymous false\nacl_file {acl}\n"
    )
    return mosquitto_factory(config, name="tls")


def test_agent_connects_with_its_client_certificate(
    tls_broker: MosquittoBroker, pki: Pki, tmp_path: Path
) -> None:
    dev_cert, dev_key = pki.issue("pi-test-1")
    ing_cert, ing_key = pki.issue("ingest")
    got: list[Any] = []
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(decode(msg.topic, bytes(msg.payload)))

    context = ssl.create_default_context(cafile=str(pki.ca_path))
    context.load_cert_chain(str(ing_cert), str(ing_key))
    ingest = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ingest", protocol=mqtt.MQTTv5)
    ingest.tls_set_context(context)
    ingest.on_message = on_message
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        c.subscribe("fleet/v1/+/+", qos=1)
        subscribed.set()

    ingest.on_connect = on_connect
    ingest.connect(tls_broker.host, tls_broker.port)
    ingest.loop_start()
    try:
        wait_for(subscribed.is_set, timeout=10)
        config = agent_config(
            f"mqtts://{tls_broker.host}:{tls_broker.port}",
            tmp_path / "state",
            tls={"ca": str(pki.ca_path), "cert": str(dev_cert), "key": str(dev_key)},
        )
        agent = RunningAgent(config, CountingCollector())

        def telemetry() -> list[Telemetry]:
            with lock:
                return [m for m in got if isinstance(m, Telemetry)]

        wait_for(lambda: len(telemetry()) >= 2, timeout=20)
        agent.stop()
        assert all(m.device_id == "pi-test-1" for m in telemetry())
    finally:
        ingest.loop_stop()
        ingest.disconnect()


def test_without_a_client_certificate_the_agent_keeps_retrying_and_buffering(
    tls_broker: MosquittoBroker, pki: Pki, tmp_path: Path
) -> None:
    config = agent_config(
        f"mqtts://{tls_broker.host}:{tls_broker.port}",
        tmp_path / "state",
        tls={"ca": str(pki.ca_path)},
    )
    agent = RunningAgent(config, CountingCollector())
    wait_for(lambda: agent.daemon.outbox.depth() >= 3, timeout=20)
    assert not agent.daemon.transport.connected
    assert agent.thread.is_alive()
    agent.stop()
