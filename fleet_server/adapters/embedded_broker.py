"""The zero-setup MQTT broker: amqtt, bound to loopback, in a background thread.

Used only when no ``FLEET_MQTT_URL`` is configured. amqtt speaks MQTT 3.1.1: no shared
subscriptions and no MQTT 5 properties, so the ingest runs as a single MQTT 3.1.1 worker
against it. Production uses Mosquitto.

Devices reach it in MQTT 3.1.1 too: an agent left at ``mqtt_version = "auto"`` offers
MQTT 5, which amqtt cannot parse (it logs "Will flag set, but will topic/message not
present in payload" and waits), then falls back to 3.1.1 (``clean_session = false``) and
amqtt takes it, retained last will included (``tests/e2e/test_agent_brokers.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedBroker:
    """An amqtt broker on ``127.0.0.1:port`` running in its own event-loop thread."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        assert host.startswith("127.") or host == "::1", f"anonymous broker on {host}"
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the broker."""
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
                # $SYS/broker/uptime every 10 s: the ingest's broker heartbeat (/readyz).
                "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 10},
            },
        }

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker; raise ``OSError`` if it cannot listen (port taken)."""
        with socket.socket() as probe:
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise OSError(
                    f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc} "
                    "(set [mqtt] embedded_port / FLEET_MQTT_EMBEDDED_PORT, or FLEET_MQTT_URL)"
                ) from None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError("the embedded MQTT broker did not start in time")
        if self._error is not None:
            raise OSError(f"the embedded MQTT broker failed: {self._error}")

    def _run(self) -> None:
        from amqtt.broker import Broker

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)

        async def boot() -> None:
            self._broker = Broker(self._config(), loop=loop)
            await self._broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def stop(self) -> None:
        """Shut the broker down and wait for its thread."""
        loop = self._loop
        if loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
        try:
            future.result(timeout=10)
        except Exception:
            log.exception("embedded broker shutdown failed")
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop = None
