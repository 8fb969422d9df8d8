"""MQTT 5 transport over paho-mqtt, driven by the caller's loop (no paho threads).

The daemon calls :meth:`MqttTransport.loop` with a timeout from its own schedule; the
simulator can drive many transports the same way. Each connection attempt uses a fresh
paho client, so paho never replays its own in-memory queue: the on-disk outbox is the
only source of what gets (re)sent, and in which order.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


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
    extra: dict[str, Any] = field(default_factory=dict)


class MqttTransport:
    """paho-mqtt 2.x client, MQTT 5, QoS 1, optional mutual TLS."""

    def __init__(self, settings: MqttSettings, events: TransportEvents | None = None) -> None:
        self.settings = settings
        self.events = events or TransportEvents()
        self._client: mqtt.Client | None = None
        self._connected = False

    @property
    def connected(self) -> bool:
        """True between CONNACK and the loss of the connection."""
        return self._connected

    @property
    def busy(self) -> bool:
        """True while a client exists (connecting or connected)."""
        return self._client is not None

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=mqtt.MQTTv5,
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
        return client

    def connect(self, will_topic: str, will_payload: bytes) -> None:
        """Start a new connection with a retained QoS 1 last will."""
        self._drop_client()
        client = self._new_client()
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        self._client = client
        try:
            client.connect(
                self.settings.host,
                self.settings.port,
                keepalive=self.settings.keepalive,
                clean_start=True,
            )
        except (OSError, ssl.SSLError, ValueError):
            self._drop_client()
            raise

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
        """One round of paho's network loop; a broken link fires ``on_disconnected``."""
        client = self._client
        if client is None:
            return
        rc = client.loop(timeout=max(timeout, 0.0))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and self._client is client:
            was = self._connected
            self._drop_client()
            if was:
                self.events.on_disconnected(mqtt.error_string(rc))
            else:
                self.events.on_disconnected(f"connection failed: {mqtt.error_string(rc)}")

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

    # --- paho callbacks --------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            self._drop_client()
            self.events.on_disconnected(f"refused: {reason}")
            return
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
        was = self._connected
        self._client = None
        self._connected = False
        if was:
            self.events.on_disconnected(str(reason))

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
