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

from fleet_server.adapters import amqtt_late_acks

log = logging.getLogger(__name__)


class _SnapshotDict(dict):  # type: ignore[type-arg]
    """A dict whose iteration walks a snapshot of its keys / items.

    amqtt 0.12 iterates its subscription table with ``await`` inside the loop (retained
    messages for a new session, broadcasts); another client subscribing meanwhile changes
    the table and the loop dies with "dictionary changed size during iteration" (200
    tracebacks when 300 devices connect at once). Iterating a snapshot is what the code
    means; a subscription added meanwhile is served by its own retained-message pass."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(dict.keys(self)))

    def keys(self):  # type: ignore[no-untyped-def]
        return list(dict.keys(self))

    def items(self):  # type: ignore[no-untyped-def]
        return list(dict.items(self))

    def values(self):  # type: ignore[no-untyped-def]
        return list(dict.values(self))


def _retained_for_subscribers_only(broker: Any) -> None:
    """amqtt 0.12 sends a (re)connecting client the retained messages of *every* topic
    filter any client subscribed to, not only its own: with 300 devices each one received
    the other 299 devices' retained commands, and the broker choked on the traffic.
    Retained messages go only to sessions subscribed to the filter."""
    publish = broker._publish_retained_messages_for_subscription

    async def own_only(subscription: tuple[str, int], session: Any) -> None:
        subscribers = dict.get(broker._subscriptions, subscription[0], [])
        if any(s.client_id == session.client_id for s, _ in subscribers):
            await publish(subscription, session)

    broker._publish_retained_messages_for_subscription = own_only


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
        amqtt_late_acks.install()  # one summary line for late PUBACKs, not tracebacks

        async def boot() -> None:
            self._broker = Broker(self._config(), loop=loop)
            self._broker._subscriptions = _SnapshotDict()  # see _SnapshotDict
            _retained_for_subscribers_only(self._broker)
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
        amqtt_late_acks.LATE_ACKS.report()  # after shutdown: its own timeouts included
