"""Commands to devices on the NATS back-end: a JetStream publish into the devices' MQTT
sessions (see :mod:`fleet_server.adapters.nats_conn`), acknowledged by the cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging

import nats.errors
from nats.aio.client import Client as NatsClient

from fleet_server.adapters.nats_conn import LoopThread, NatsOptions, connect, publish_to_device

log = logging.getLogger(__name__)


class NatsPublisher:
    """Implements :class:`fleet_server.services.commands.Publisher` over NATS.

    Connects lazily (the API starts while the cluster is down) and reconnects to any node;
    :meth:`publish` returns once the stream holding the device's session stored the
    command, and raises ``OSError`` when it could not.
    """

    def __init__(
        self, options: NatsOptions, *, name: str = "fleet-commands", connect_timeout_s: float = 5
    ) -> None:
        self.options = options
        self.connect_timeout_s = connect_timeout_s
        self.name = name
        self._loop = LoopThread("nats-publisher")
        self._nc: NatsClient | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> NatsClient:
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                # Bounded: a caller waits for an answer, not for the cluster to come back.
                self._nc = await asyncio.wait_for(
                    connect(self.options, self.name), self.connect_timeout_s
                )
            return self._nc

    def wait_connected(self, timeout: float) -> bool:
        """Connect now; False when no server answered within ``timeout``."""
        try:
            return self._loop.call(self._client(), timeout).is_connected
        except (OSError, nats.errors.Error, TimeoutError, concurrent.futures.TimeoutError):
            return False

    async def _publish(self, topic: str, payload: bytes) -> None:
        nc = await self._client()
        await publish_to_device(nc.jetstream(), topic, payload)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Store ``payload`` for the device's MQTT session with QoS 1 (``qos`` is ignored:
        commands are always QoS 1)."""
        try:
            self._loop.call(self._publish(topic, payload), timeout=15)
        except (OSError, nats.errors.Error, TimeoutError, concurrent.futures.TimeoutError) as exc:
            raise OSError(f"NATS did not store the command: {exc!r}") from None

    def close(self) -> None:
        """Close the connection and stop the loop."""
        if self._nc is not None and not self._nc.is_closed:
            try:
                self._loop.call(self._nc.close(), timeout=5)
            except Exception:
                log.debug("nats publisher close failed", exc_info=True)
        self._loop.stop()
