"""MQTT transport over paho-mqtt 2.x (MQTT 5 or 3.1.1), driven by the caller's loop.

The daemon calls :meth:`MqttTransport.loop` with a timeout from its own schedule; the
simulator can drive many transports the same way. Each connection attempt uses a fresh
paho client, so paho never replays its own in-memory queue: the on-disk outbox is the
only source of what gets (re)sent, and in which order.

Which MQTT version (``mqtt_version``): ``"5"``, ``"3.1.1"``, or ``"auto"`` (the default),
which offers MQTT 5 and falls back to 3.1.1 when the broker refuses it: a CONNACK saying
"unsupported protocol version", the connection closed before any CONNACK, or no CONNACK
within :data:`PROBE_TIMEOUT_S` (the embedded amqtt broker misreads an MQTT 5 CONNECT and
waits for bytes that never come). The first version that connects is kept for the rest
of the process. Everything the agent relies on holds under both: QoS 1, a retained
presence, a retained QoS 1 last will, and a persistent session on a stable client id
(MQTT 5: ``clean_start=False`` with a session expiry; 3.1.1: ``clean_session=False``).

Every failed attempt is logged with the broker's reason (refused: not authorised, bad
user name or password, unsupported protocol version...; or the socket's: connection
refused, name resolution, TLS); while offline, at most once a minute, how many messages
wait in the outbox. When to retry is the caller's (:class:`agent.core.schedule.Backoff`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

MQTT_VERSIONS = ("auto", "5", "3.1.1")
PROBE_TIMEOUT_S = 5.0
"""``auto``: how long to wait for the CONNACK of the MQTT 5 attempt before trying 3.1.1."""
QUEUE_LOG_INTERVAL_S = 60.0
"""While offline, how often (at most) the number of queued messages is logged."""
SESSION_EXPIRY_S = 7 * 86400
"""MQTT 5 session expiry: the broker keeps the session (and queued commands) a week."""
UNSUPPORTED_PROTOCOL = 132
"""MQTT 5 CONNACK reason code "Unsupported protocol version"."""


@dataclass
class TransportEvents:
    """Callbacks the transport calls from inside :meth:`Transport.loop`."""

    on_connected: Callable[[], None] = lambda: None
    on_disconnected: Callable[[str], None] = lambda reason: None
    on_published: Callable[[int, bool], None] = lambda mid, ok: None
    """``(mid, accepted)``: the broker acknowledged (QoS 1) message ``mid``."""
    on_message: Callable[[str, bytes], None] = lambda topic, payload: None


class Transport(Protocol):
    """The small surface the daemon (and the simulator) needs from an MQTT client."""

    events: TransportEvents

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        ...

    @property
    def busy(self) -> bool:
        """True while a connection exists or is being set up."""
        ...

    def connect(self, will_topic: str, will_payload: bytes) -> None:
        """Open a connection (raises ``OSError`` when the broker cannot be reached)."""
        ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Send at QoS 1; the message id, or ``None`` when not connected."""
        ...

    def loop(self, timeout: float) -> None:
        """Do network I/O for up to ``timeout`` seconds and fire callbacks."""
        ...

    def disconnect(self) -> None:
        """Close cleanly (an MQTT DISCONNECT, so no last will is sent)."""
        ...


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect."""

    host: str
    port: int
    client_id: str
    command_topic: str
    keepalive: int = 30
    tls: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    username: str | None = None
    password: str | None = None
    max_inflight: int = 20
    mqtt_version: str = "auto"
    """``"auto"``, ``"5"`` or ``"3.1.1"`` (see the module docstring)."""
    connect_timeout_s: float = 30.0
    """How long to wait for a CONNACK once the CONNECT is sent."""
    probe_timeout_s: float = PROBE_TIMEOUT_S
    alternates: tuple[tuple[str, int], ...] = ()
    """Other nodes of the broker's cluster: after a failed or lost connection the next
    attempt goes to the next node (the session, will and retained presence are the
    cluster's, so any node will do)."""

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every node to try, the configured first one first."""
        return ((self.host, self.port), *self.alternates)

    @property
    def url(self) -> str:
        """The broker as a URL, for log lines."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def describe_error(exc: BaseException) -> str:
    """A socket-level connection failure in words (refused, DNS, TLS, timeout...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS error: the broker's certificate is not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {getattr(exc, 'reason', None) or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the broker's host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no broker listening on that port)"
    if isinstance(exc, TimeoutError):
        return "timed out opening the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def describe_refusal(reason: ReasonCode) -> str:
    """A CONNACK refusal in words, with the broker's reason code."""
    text = f"refused by the broker: {reason.getName()} (reason code {reason.value})"
    if reason.getName() in ("Not authorized", "Bad user name or password"):
        text += "; not authorised: check username/password_file, the certificate and the ACL"
    return text


@dataclass
class _Attempt:
    """One connection attempt, from CONNECT to CONNACK (or its failure)."""

    version: str
    started: float
    refused: ReasonCode | None = None
    error: str | None = None
    """The last socket error paho logged during the attempt."""
    closed: bool = False


class MqttTransport:
    """paho-mqtt 2.x client, MQTT 5 or 3.1.1, QoS 1, optional mutual TLS."""

    def __init__(
        self,
        settings: MqttSettings,
        events: TransportEvents | None = None,
        *,
        queue_depth: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settings.mqtt_version not in MQTT_VERSIONS:
            raise ValueError(f"mqtt_version {settings.mqtt_version!r} not in {MQTT_VERSIONS}")
        self.settings = settings
        self.events = events or TransportEvents()
        self.queue_depth = queue_depth
        self.clock = clock
        self._client: mqtt.Client | None = None
        self._connected = False
        self._version = None if settings.mqtt_version == "auto" else settings.mqtt_version
        self._attempt: _Attempt | None = None
        self._will: tuple[str, bytes] = ("", b"")
        self._offline_since = clock()
        self._queue_logged_at = -math.inf
        self._node = 0

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected

    @property
    def busy(self) -> bool:
        """True while a client exists (connecting or connected)."""
        return self._client is not None

    @property
    def node(self) -> tuple[str, int]:
        """The node the current (or next) connection goes to."""
        nodes = self.settings.nodes
        return nodes[self._node % len(nodes)]

    def _next_node(self) -> None:
        if self.settings.alternates:
            self._node += 1
            log.info("next connection attempt goes to %s:%d", *self.node)

    @property
    def protocol(self) -> str | None:
        """The MQTT version in use (``"5"`` or ``"3.1.1"``); ``None`` until ``auto`` chose."""
        return self._version

    def _new_client(self, version: str) -> mqtt.Client:
        s = self.settings
        if version == "5":
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=False,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                reconnect_on_failure=False,  # no silent downgrade to MQTT 3.1
            )
        client.max_inflight_messages_set(s.max_inflight)
        client.max_queued_messages_set(0)
        if s.tls:
            context = ssl.create_default_context(cafile=str(s.ca) if s.ca else None)
            if s.cert and s.key:
                context.load_cert_chain(str(s.cert), str(s.key))
            client.tls_set_context(context)
        if s.username:
            client.username_pw_set(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def connect(self, will_topic: str, will_payload: bytes) -> None:
        """Start a new connection with a retained QoS 1 last will; a failure to open it is
        logged with its reason and raised as ``OSError``."""
        self._drop_client()
        self._will = (will_topic, will_payload)
        version = self._version or "5"
        try:
            self._open(version)
        except OSError as exc:
            self._log_failure(version, str(exc))
            self._next_node()
            raise

    def _open(self, version: str) -> None:
        """Send a CONNECT in ``version``; ``OSError`` (with the reason) if it cannot."""
        s = self.settings
        host, port = self.node
        client = self._new_client(version)
        client.will_set(self._will[0], self._will[1], qos=1, retain=True)
        self._client = client
        self._attempt = _Attempt(version, self.clock())
        try:
            if version == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                client.connect(
                    host, port, keepalive=s.keepalive, clean_start=False, properties=props
                )
            else:
                client.connect(host, port, keepalive=s.keepalive)
        except (OSError, ValueError) as exc:
            self._drop_client()
            raise OSError(describe_error(exc)) from exc

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish at QoS 1 while connected."""
        if self._client is None or not self._connected:
            return None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    def loop(self, timeout: float) -> None:
        """One round of paho's network loop; a broken link or a failed attempt fires
        ``on_disconnected`` (an ``auto`` attempt refused in MQTT 5 retries in 3.1.1 first)."""
        client = self._client
        if client is None:
            return
        rc = client.loop(timeout=max(timeout, 0.0))
        if self._client is not client:
            return
        if self._connected:
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(mqtt.error_string(rc))
            return
        attempt = self._attempt
        assert attempt is not None
        failure = self._attempt_failure(attempt, rc)
        if failure is None:
            return
        text, refuses_v5 = failure
        if refuses_v5 and attempt.version == "5" and self._version is None:
            log.info("%s did not accept MQTT 5 (%s); trying MQTT 3.1.1", self.settings.url, text)
            self._drop_client()
            try:
                self._open("3.1.1")
            except OSError as exc:
                self._fail("3.1.1", str(exc))
            return
        if refuses_v5 and attempt.version == "5":
            text += ' (does the broker speak MQTT 5? try mqtt_version = "auto" or "3.1.1")'
        self._fail(attempt.version, text)

    def _attempt_failure(self, attempt: _Attempt, rc: MQTTErrorCode) -> tuple[str, bool] | None:
        """Why the pending attempt failed, and whether that looks like a broker refusing
        MQTT 5; ``None`` while it may still succeed."""
        if attempt.refused is not None:
            return describe_refusal(attempt.refused), attempt.refused.value == UNSUPPORTED_PROTOCOL
        if attempt.error is not None:
            return attempt.error, False
        if attempt.closed or rc == MQTTErrorCode.MQTT_ERR_CONN_LOST:
            return "the broker closed the connection without answering the CONNECT", True
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
            return mqtt.error_string(rc), False
        probing = attempt.version == "5" and self._version is None
        limit = self.settings.probe_timeout_s if probing else self.settings.connect_timeout_s
        if self.clock() - attempt.started > limit:
            return f"no answer (CONNACK) to the CONNECT within {limit:g}s", True
        return None

    def _lost(self, reason: str) -> None:
        self._drop_client()
        self._next_node()
        self._offline_since = self.clock()
        self.events.on_disconnected(reason)

    def _fail(self, version: str, reason: str) -> None:
        self._drop_client()
        self._log_failure(version, reason)
        self._next_node()
        self.events.on_disconnected(f"connection failed: {reason}")

    def _log_failure(self, version: str, reason: str) -> None:
        host, port = self.node
        url = f"{'mqtts' if self.settings.tls else 'mqtt'}://{host}:{port}"
        log.warning("cannot connect to %s (MQTT %s): %s", url, version, reason)
        if self.queue_depth is None:
            return
        now = self.clock()
        if now - self._queue_logged_at < QUEUE_LOG_INTERVAL_S:
            return
        self._queue_logged_at = now
        try:
            depth = self.queue_depth()
        except Exception as exc:  # a count for a log line must never break reconnecting
            log.debug("cannot count queued messages: %s", exc)
            return
        log.warning(
            "offline for %.0fs: %d messages queued, delivered once connected",
            now - self._offline_since,
            depth,
        )

    def disconnect(self) -> None:
        """Send DISCONNECT and close."""
        client = self._client
        if client is None:
            return
        if self._connected:
            self._connected = False  # our own DISCONNECT is not a lost connection
            client.disconnect()
            for _ in range(10):
                if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        self._drop_client()

    # --- paho callbacks (they only record; loop() acts) ------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        attempt = self._attempt
        if client is not self._client or attempt is None:
            return
        if reason.is_failure:
            attempt.refused = reason
            return
        if self._version is None:
            self._version = attempt.version
            log.info(
                "%s speaks MQTT %s: using it for the life of this process",
                self.settings.url,
                attempt.version,
            )
        self._connected = True
        client.subscribe(self.settings.command_topic, qos=1)
        self.events.on_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        if not self._connected:
            if self._attempt is not None:
                self._attempt.closed = True
            return
        self._client = None
        self._connected = False
        self._offline_since = self.clock()
        self._next_node()
        self.events.on_disconnected(str(reason))

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        attempt = self._attempt
        if (
            client is self._client
            and attempt is not None
            and not self._connected
            and level in (mqtt.MQTT_LOG_ERR, mqtt.MQTT_LOG_WARNING)
        ):
            attempt.error = text

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is self._client:
            self.events.on_published(mid, not reason.is_failure)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if client is self._client:
            self.events.on_message(message.topic, bytes(message.payload))
