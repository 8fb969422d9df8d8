"""The fleet's broker configuration, enforced by a real Mosquitto over mutual TLS.

Every test starts a private Mosquitto with the configuration
``fleet_server.identity.mosquitto_config`` renders, and talks to it with paho MQTT 5
clients holding certificates from the fleet CA.

A denied QoS 1 publish is still acknowledged by Mosquitto, so "B never receives it" is
shown by ordering, not by waiting: the forbidden message is sent first, then an allowed
control message on the same path; once the control message has arrived, the forbidden
one would have arrived before it.
"""

from __future__ import annotations

import getpass
import os
import signal
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from agent.credentials import CredentialsBundle, make_device_key_and_csr, write_bundle
from fleet_server.identity import ca_store
from fleet_server.identity.certificates import build_crl, new_private_key, private_key_pem
from fleet_server.identity.errors import RenewalRefusedError
from fleet_server.identity.mosquitto_config import BrokerSettings, render_acl, render_mosquitto_conf
from tests.conftest import MosquittoBroker, wait_for

pytestmark = pytest.mark.mosquitto

NOW = datetime.now(UTC).replace(microsecond=0)
URLS = {"mqtt_url": "mqtts://127.0.0.1:8883", "api_url": "https://127.0.0.1:8443"}


@dataclass
class Pki:
    """A fleet CA with the credentials the tests use."""

    ca: ca_store.CertificateAuthority
    root: Path
    server_dir: Path
    bundles: dict[str, CredentialsBundle]

    def __getitem__(self, name: str) -> CredentialsBundle:
        return self.bundles[name]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca_store.init_root(base / "root", NOW)
    ca = ca_store.init_issuing(base / "root", base / "issuing", NOW)
    ca.server_certificate(["127.0.0.1", "localhost"], base / "server", NOW)
    bundles = {"svc-ingest": ca.service_credentials("svc-ingest", base / "svc-ingest", NOW, **URLS)}
    for device in ("dev-a", "dev-b", "dev-c", "dev-r"):
        bundles[device] = ca.provision(device, base / device, NOW, **URLS)
    # Issued through an injected clock three days ago, valid for one day: expired now.
    bundles["dev-x"] = ca.provision(
        "dev-x", base / "dev-x", NOW - timedelta(days=3), validity=timedelta(days=1), **URLS
    )
    # Valid for one more hour: due for renewal.
    bundles["dev-y"] = ca.provision(
        "dev-y",
        base / "dev-y",
        NOW - timedelta(days=1),
        validity=timedelta(days=1, hours=1),
        **URLS,
    )
    ca.revoke(NOW, cn="dev-r", reason="key_compromise")
    # Another CA issuing a certificate with a legitimate device's name.
    ca_store.init_root(base / "other-root", NOW)
    other = ca_store.init_issuing(base / "other-root", base / "other-issuing", NOW)
    bundles["impostor-a"] = other.provision("dev-a", base / "impostor-a", NOW, **URLS)
    return Pki(ca=ca, root=base / "root", server_dir=base / "server", bundles=bundles)


def _settings(pki: Pki, acl_file: Path, crlfile: Path | None = None) -> BrokerSettings:
    return BrokerSettings(
        cafile=pki.ca.chain_path,
        certfile=pki.server_dir / "server.crt",
        keyfile=pki.server_dir / "server.key",
        crlfile=crlfile or pki.ca.crl_path,
        acl_file=acl_file,
        port="{port}",
        # Started as root, Mosquitto would drop to the 'mosquitto' account, which cannot
        # read the test's private directories; as another user this line has no effect.
        user=getpass.getuser(),
        persistence_dir="{workdir}",
    )


@pytest.fixture
def start_broker(
    pki: Pki, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> Callable[..., MosquittoBroker]:
    def start(crlfile: Path | None = None) -> MosquittoBroker:
        acl = tmp_path / "fleet.acl"
        acl.write_text(render_acl())
        return mosquitto_factory(render_mosquitto_conf(_settings(pki, acl, crlfile)))

    return start


@pytest.fixture
def broker(start_broker: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return start_broker()


# --- a small MQTT 5 client that records what happens ----------------------------------


class Probe:
    """A paho MQTT 5 client over mutual TLS that records its connection outcome, its
    subscription grants and the messages it receives."""

    def __init__(
        self,
        broker: MosquittoBroker,
        bundle: CredentialsBundle | None,
        *,
        client_id: str | None = None,
        will: tuple[str, bytes] | None = None,
        chain: Path | None = None,
    ) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else (bundle.device_id if bundle else ""),
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.client.tls_set(
            ca_certs=str(chain or (bundle.chain_path if bundle else None)),
            certfile=str(bundle.cert_path) if bundle else None,
            keyfile=str(bundle.key_path) if bundle else None,
        )
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.lock = threading.Lock()
        self.outcome: str | None = None
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subacks: dict[int, list[str]] = {}
        self.pubacks: dict[int, str] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.started = False

    def _on_connect(self, _c, _u, _f, reason, _p) -> None:
        with self.lock:
            self.outcome = "connected" if not reason.is_failure else f"refused: {reason}"

    def _on_disconnect(self, _c, _u, _f, reason, _p) -> None:
        with self.lock:
            if self.outcome in (None, "connected"):
                self.outcome = f"disconnected: {reason}" if self.outcome else f"refused: {reason}"

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def _on_subscribe(self, _c, _u, mid, reasons, _p) -> None:
        with self.lock:
            self.subacks[mid] = [str(r) for r in reasons]

    def _on_publish(self, _c, _u, mid, reason, _p) -> None:
        with self.lock:
            self.pubacks[mid] = str(reason)

    def connect(self) -> str:
        """Connect and wait for the outcome: ``connected`` or why it was refused."""
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except (ssl.SSLError, OSError) as exc:
            self.outcome = f"refused: {type(exc).__name__}: {exc}"
            return self.outcome
        self.client.loop_start()
        self.started = True
        wait_for(lambda: self.outcome is not None, timeout=10)
        assert self.outcome is not None
        return self.outcome

    def subscribe(self, *filters: str) -> list[str]:
        """Subscribe (QoS 1) and return the broker's answer for each filter."""
        _, mid = self.client.subscribe([(f, 1) for f in filters])
        return wait_for(lambda: self.subacks.get(mid), timeout=10)  # type: ignore[return-value]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish at QoS 1 and return the PUBACK reason (Mosquitto acknowledges a denied
        publish too, with 'Not authorized' in MQTT 5)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return wait_for(lambda: self.pubacks.get(info.mid), timeout=10)  # type: ignore[return-value]

    def received(self, payload: bytes) -> bool:
        with self.lock:
            return any(p == payload for _, p, _ in self.messages)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p, _ in self.messages]

    def close(self) -> None:
        if self.started:
            self.client.disconnect()
            self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    def make(broker: MosquittoBroker, bundle: CredentialsBundle | None, **kw) -> Probe:
        probe = Probe(broker, bundle, **kw)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        probe.close()


def _connected(make: Callable[..., Probe], broker, bundle, **kw) -> Probe:
    probe = make(broker, bundle, **kw)
    outcome = probe.connect()
    assert outcome == "connected", f"{outcome}\n{broker.log()}"
    return probe


def _ingest(make, broker, pki: Pki) -> Probe:
    ingest = _connected(make, broker, pki["svc-ingest"])
    granted = ingest.subscribe(
        "$share/ingest/fleet/v1/+/telemetry", "fleet/v1/+/event", "fleet/v1/+/presence"
    )
    assert granted == ["Granted QoS 1"] * 3
    return ingest


# --- what devices and services may do --------------------------------------------------


def test_device_and_ingest_exchange_telemetry_and_commands(broker, pki, probes) -> None:
    ingest = _ingest(probes, broker, pki)
    device = _connected(probes, broker, pki["dev-a"])
    assert device.subscribe("fleet/v1/dev-a/command") == ["Granted QoS 1"]

    assert device.publish("fleet/v1/dev-a/telemetry", b"a-telemetry") == "Success"
    assert device.publish("fleet/v1/dev-a/event", b"a-event") == "Success"
    assert device.publish("fleet/v1/dev-a/presence", b"a-online", retain=True) == "Success"
    wait_for(lambda: {b"a-telemetry", b"a-event", b"a-online"} <= set(ingest.payloads()))

    assert ingest.publish("fleet/v1/dev-a/command", b"reboot-a") == "Success"
    wait_for(lambda: device.received(b"reboot-a"))


def test_retained_presence_and_last_will_on_own_topic(broker, pki, probes) -> None:
    device = _connected(probes, broker, pki["dev-a"], will=("fleet/v1/dev-a/presence", b"a-off"))
    # Nobody subscribes yet: MQTT 5 says so, and the broker still keeps the message.
    assert device.publish("fleet/v1/dev-a/presence", b"a-on", retain=True) == (
        "No matching subscribers"
    )
    late = _ingest(probes, broker, pki)  # subscribes after the fact: gets the retained one
    wait_for(lambda: (("fleet/v1/dev-a/presence", b"a-on", True)) in late.messages)

    # The device vanishes without DISCONNECT: the broker publishes its will.
    device.client.socket().close()
    wait_for(lambda: late.received(b"a-off"))


def test_last_will_on_another_devices_topic_is_dropped(broker, pki, probes) -> None:
    ingest = _ingest(probes, broker, pki)
    forger = _connected(probes, broker, pki["dev-b"], will=("fleet/v1/dev-a/presence", b"a-off"))
    forger.client.socket().close()
    wait_for(lambda: "Client dev-b closed its connection" in broker.log(), timeout=10)
    control = _connected(probes, broker, pki["dev-c"])
    assert control.publish("fleet/v1/dev-c/presence", b"c-on") == "Success"
    wait_for(lambda: ingest.received(b"c-on"))
    assert not ingest.received(b"a-off")


def test_device_cannot_publish_to_another_devices_topics(broker, pki, probes) -> None:
    ingest = _ingest(probes, broker, pki)
    victim = _connected(probes, broker, pki["dev-b"])
    assert victim.subscribe("fleet/v1/dev-b/command") == ["Granted QoS 1"]
    attacker = _connected(probes, broker, pki["dev-a"])

    for kind in ("telemetry", "event", "presence", "command"):
        assert attacker.publish(f"fleet/v1/dev-b/{kind}", b"forged-" + kind.encode()) == (
            "Not authorized"
        )
    # A device may not command itself either, nor write outside the fleet tree.
    assert attacker.publish("fleet/v1/dev-a/command", b"self-command") == "Not authorized"
    assert attacker.publish("elsewhere/topic", b"stray") == "Not authorized"

    # Control messages sent afterwards on the same paths do arrive ...
    assert attacker.publish("fleet/v1/dev-a/telemetry", b"control-t") == "Success"
    assert attacker.publish("fleet/v1/dev-a/event", b"control-e") == "Success"
    assert attacker.publish("fleet/v1/dev-a/presence", b"control-p") == "Success"
    assert ingest.publish("fleet/v1/dev-b/command", b"control-c") == "Success"
    wait_for(lambda: {b"control-t", b"control-e", b"control-p"} <= set(ingest.payloads()))
    wait_for(lambda: victim.received(b"control-c"))
    # ... so the forged ones, sent earlier, would have arrived before them.
    assert not [p for p in ingest.payloads() if p.startswith(b"forged")]
    assert victim.payloads() == [b"control-c"]


def test_device_cannot_read_another_devices_topics(broker, pki, probes) -> None:
    ingest = _ingest(probes, broker, pki)
    other = _connected(probes, broker, pki["dev-b"])
    spy = _connected(probes, broker, pki["dev-a"])
    spy.subscribe(
        "fleet/v1/dev-a/command",
        "fleet/v1/dev-b/command",
        "fleet/v1/+/command",
        "fleet/v1/dev-b/telemetry",
        "fleet/v1/+/telemetry",
        "fleet/v1/#",
        "#",
        "$SYS/#",
    )
    # Mosquitto grants the subscriptions but filters every message by the ACL.
    assert other.publish("fleet/v1/dev-b/telemetry", b"b-telemetry") == "Success"
    wait_for(lambda: ingest.received(b"b-telemetry"))
    assert ingest.publish("fleet/v1/dev-b/command", b"b-command") == "Success"
    assert ingest.publish("fleet/v1/dev-a/command", b"a-command") == "Success"

    wait_for(lambda: spy.received(b"a-command"))
    topics = {t for t, _, _ in spy.messages}
    assert topics == {"fleet/v1/dev-a/command"}, spy.messages
    assert b"b-telemetry" not in spy.payloads()
    assert b"b-command" not in spy.payloads()


@pytest.mark.parametrize("client_id", ["+", "#", "dev-b"])
def test_client_id_is_the_certificate_identity(client_id, broker, pki, probes) -> None:
    """A client id of '+', '#' or another device's id changes nothing: the broker
    replaces it by the certificate CN, so the client gets nothing of another device's and
    cannot take over its session."""
    ingest = _ingest(probes, broker, pki)
    victim = _connected(probes, broker, pki["dev-b"])
    victim.subscribe("fleet/v1/dev-b/command")
    tricky = _connected(probes, broker, pki["dev-a"], client_id=client_id)
    tricky.subscribe("fleet/v1/+/command", "fleet/v1/dev-b/command", "#")

    assert tricky.publish("fleet/v1/dev-b/telemetry", b"forged") == "Not authorized"
    assert ingest.publish("fleet/v1/dev-b/command", b"for-b") == "Success"
    assert ingest.publish("fleet/v1/dev-a/command", b"for-a") == "Success"
    wait_for(lambda: tricky.received(b"for-a") and victim.received(b"for-b"))
    assert b"for-b" not in tricky.payloads()
    assert victim.outcome == "connected"  # not kicked off by a client reusing its id
    assert "as dev-a (p5" in broker.log()


def _forge_wildcard_identity(pki: Pki, cn: str, directory: Path) -> CredentialsBundle:
    """A certificate the CA's policy would never issue (CN '+' or '#'), signed with the
    issuing key directly, as a CA bug or a stolen key might."""
    key = new_private_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(pki.ca.issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(minutes=5))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(pki.ca.issuer.key, hashes.SHA256())
    )
    return write_bundle(
        directory,
        device_id=cn,
        key_pem=private_key_pem(key),
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_chain_pem=pki.ca.chain_pem(),
        **URLS,
    )


@pytest.mark.parametrize("identity", ["+", "#"])
def test_wildcard_identity_gets_nothing(identity, broker, pki, probes, tmp_path) -> None:
    """Even with a certificate whose CN is a wildcard (so its username and client id are
    '+' or '#'), the %u patterns do not apply: it can neither read nor write."""
    bundle = _forge_wildcard_identity(pki, identity, tmp_path / "forged")
    ingest = _ingest(probes, broker, pki)
    rogue = _connected(probes, broker, bundle)
    rogue.subscribe("fleet/v1/+/command", "fleet/v1/#", "#")
    assert rogue.publish("fleet/v1/dev-a/telemetry", b"rogue") == "Not authorized"

    device = _connected(probes, broker, pki["dev-a"])
    device.subscribe("fleet/v1/dev-a/command")
    assert device.publish("fleet/v1/dev-a/telemetry", b"a-telemetry") == "Success"
    assert ingest.publish("fleet/v1/dev-a/command", b"a-command") == "Success"
    wait_for(lambda: device.received(b"a-command") and ingest.received(b"a-telemetry"))
    # The rogue may receive nothing to serve as a control message, so a round trip on
    # its own connection is the barrier: the broker answers this SUBSCRIBE after any
    # message it had already queued to the rogue, and paho handles packets in order.
    rogue.subscribe("fleet/v1/barrier")
    assert not ingest.received(b"rogue")
    assert rogue.messages == []


# --- who may connect at all ------------------------------------------------------------


def test_certificate_from_another_ca_is_refused(broker, pki, probes) -> None:
    impostor = probes(broker, pki["impostor-a"], chain=pki["dev-a"].chain_path)
    assert impostor.connect().startswith("refused"), broker.log()
    # The broker logs the handshake's failure after the client saw it: poll its log.
    wait_for(lambda: "certificate verify failed" in broker.log(), timeout=10)


def test_client_without_certificate_is_refused(broker, pki, probes) -> None:
    anonymous = probes(broker, None, client_id="anon", chain=pki["dev-a"].chain_path)
    assert anonymous.connect().startswith("refused")


def test_revoked_certificate_is_refused(broker, pki, probes) -> None:
    assert probes(broker, pki["dev-r"]).connect().startswith("refused")
    assert _connected(probes, broker, pki["dev-a"]).outcome == "connected"


def test_revocation_takes_effect_on_reload(broker, pki, probes) -> None:
    first = _connected(probes, broker, pki["dev-c"])
    first.close()

    revoked = pki.ca.revoke(NOW, cn="dev-c", reason="cessation_of_operation")
    assert [r.cn for r in revoked] == ["dev-c"]
    (mosquitto,) = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(broker.config_path) in (p.info["cmdline"] or [])
    ]
    os.kill(mosquitto.pid, signal.SIGHUP)
    wait_for(lambda: "Reloading config" in broker.log())

    assert probes(broker, pki["dev-c"]).connect().startswith("refused")
    assert _connected(probes, broker, pki["dev-a"]).outcome == "connected"


def test_expired_crl_locks_everyone_out(pki, start_broker, probes, tmp_path) -> None:
    """Why the CRL must be re-signed on a schedule: past its next_update, nobody gets in."""
    stale = build_crl(pki.ca.issuer, [], NOW - timedelta(days=10), 1, timedelta(days=1))
    path = tmp_path / "stale-crl.pem"
    path.write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    broker = start_broker(crlfile=path)
    assert probes(broker, pki["dev-a"]).connect().startswith("refused")


def test_expired_certificate_is_refused(broker, pki, probes) -> None:
    assert pki["dev-x"].not_after < NOW
    assert probes(broker, pki["dev-x"]).connect().startswith("refused")
    with pytest.raises(RenewalRefusedError, match="expired"):
        pki.ca.renew(
            pki["dev-x"].cert_path.read_bytes(), make_device_key_and_csr("dev-x").csr_pem, NOW
        )


def test_renewed_certificate_connects(broker, pki, probes, tmp_path) -> None:
    old = pki["dev-y"]
    assert old.not_after - NOW < timedelta(hours=2)
    fresh = make_device_key_and_csr("dev-y")
    cert = pki.ca.renew(old.cert_path.read_bytes(), fresh.csr_pem, NOW)
    renewed = write_bundle(
        tmp_path / "dev-y",
        device_id="dev-y",
        key_pem=fresh.key_pem,
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_chain_pem=old.chain_path.read_bytes(),
        mqtt_url=old.mqtt_url,
        api_url=old.api_url,
    )
    assert renewed.not_after > NOW + timedelta(days=300)
    ingest = _ingest(probes, broker, pki)
    device = _connected(probes, broker, renewed)
    assert device.publish("fleet/v1/dev-y/telemetry", b"renewed") == "Success"
    wait_for(lambda: ingest.received(b"renewed"))
