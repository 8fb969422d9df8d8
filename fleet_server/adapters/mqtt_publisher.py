"""Publishing commands to devices through the broker (paho, QoS 1)."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_server.adapters.mqtt_url import ClientTls


class PahoPublisher:
    """A connected paho client that publishes with QoS 1 and waits for the broker's ack.

    Implements :class:`fleet_server.services.commands.Publisher`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        mqtt5: bool = True,
        tls: ClientTls | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fleet-server-cmd-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311,
        )
        if tls is not None:
            tls.apply(self.client)
        self._connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self._connected.clear()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            self._connected.set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` passes."""
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish; raise ``OSError`` when the broker is unreachable or does not ack."""
        if not self._connected.wait(5):
            raise OSError("not connected to the MQTT broker")
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise OSError(f"publish failed: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(timeout=10)
        except (RuntimeError, ValueError) as exc:
            raise OSError(f"publish failed: {exc}") from None
        if not info.is_published():
            raise OSError("the broker did not acknowledge the command in time")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()
