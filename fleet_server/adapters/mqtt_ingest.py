"""The MQTT side of ingest: a paho subscriber that acks only what the database committed.

paho runs its network loop in a thread and puts each message on a queue; the worker
thread takes batches off the queue, hands them to the :class:`BatchWriter`, and after the
commit acknowledges them (``manual_ack``). The session is persistent (MQTT 5
``clean_start=False`` with a session expiry, or MQTT 3.1.1 ``clean_session=False``), so
whatever was not acknowledged when the worker died is delivered again when it comes back,
and the database's dedupe key makes the redelivery harmless.

Several workers can share the load through an MQTT 5 shared subscription
(``$share/<group>/fleet/v1/+/<kind>``). On an MQTT 3.1.1 broker (the embedded one) run a
single worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.adapters.mqtt_url import ClientTls
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.ingest import BatchWriter, Inbound

if TYPE_CHECKING:
    from fleet_server.services.renewal import CertificateRenewer
from protocol import Kind, shared_subscription, subscription

log = logging.getLogger(__name__)

INGEST_KINDS = (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE)


@dataclass(frozen=True, slots=True)
class _Pending:
    inbound: Inbound
    mid: int
    qos: int
    generation: int


@dataclass(frozen=True)
class IngestOptions:
    """How the worker talks to the broker and batches writes."""

    host: str
    port: int
    client_id: str = "fleet-ingest"
    mqtt5: bool = True
    shared_group: str | None = None
    session_expiry_s: int = 86400
    receive_maximum: int = 2000
    keepalive_s: int = 30
    batch_size: int = 500
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 10.0
    tls: ClientTls | None = None


class IngestWorker:
    """One ingest worker: paho subscriber + batch writer loop."""

    def __init__(
        self,
        writer: BatchWriter,
        options: IngestOptions,
        *,
        clock: Clock = system_clock,
        renewer: CertificateRenewer | None = None,
    ) -> None:
        self.writer = writer
        self.renewer = renewer
        self.options = options
        self.clock = clock
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._generation = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self.client = self._make_client()

    # -- paho ----------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        o = self.options
        if o.mqtt5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=o.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=o.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
                manual_ack=True,
            )
        if o.tls is not None:
            o.tls.apply(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        return client

    def _topics(self) -> list[str]:
        o = self.options
        if o.mqtt5 and o.shared_group:
            return [shared_subscription(o.shared_group, k) for k in INGEST_KINDS]
        return [subscription(k) for k in INGEST_KINDS]

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("ingest: broker refused the connection: %s", reason)
            return
        self._generation += 1
        client.subscribe([(t, 1) for t in self._topics()])
        self._connected.set()
        log.info("ingest: connected to %s:%s", self.options.host, self.options.port)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest: lost the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(
            _Pending(
                Inbound(msg.topic, bytes(msg.payload), self.clock()),
                msg.mid,
                msg.qos,
                self._generation,
            )
        )

    # -- lifecycle -----------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        """Connect (persistent session) and start the network thread."""
        o = self.options
        if o.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = o.session_expiry_s
            props.ReceiveMaximum = o.receive_maximum
            self.client.connect_async(
                o.host, o.port, keepalive=o.keepalive_s, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            log.warning("ingest: broker not reachable yet; will keep trying")

    @property
    def connected(self) -> bool:
        """True while the subscriber holds a connection."""
        return self._connected.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to flush what it holds and return."""
        self._stop.set()

    def run(self) -> None:
        """Batch, store and ack until :meth:`stop`; then flush the queue and disconnect."""
        try:
            while not self._stop.is_set():
                self._step(timeout=0.2)
            while self._step(timeout=0.0):
                pass
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _take(self, timeout: float) -> list[_Pending]:
        try:
            first = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
        except queue.Empty:
            return []
        items = [first]
        limit = self.options.batch_size
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _step(self, timeout: float) -> bool:
        """Store and ack one batch; False when there was nothing to do."""
        items = self._take(timeout)
        if not items:
            return False
        delay = self.options.retry_backoff_s
        while True:
            try:
                self.writer.write([i.inbound for i in items])
                break
            except Exception as exc:
                # Nothing is acked until a write succeeds: whatever went wrong (database
                # down, or a bug), the batch stays with the broker and is retried.
                self.writer.metrics.db_errors.inc()
                if isinstance(exc, SQLAlchemyError):
                    log.warning("ingest: database write failed (%s); retry in %.1fs", exc, delay)
                else:
                    log.exception("ingest: unexpected error storing a batch; retry in %.1fs", delay)
                if self._stop.wait(delay):
                    # Shutting down: leave the batch unacknowledged; it is redelivered.
                    log.warning("ingest: stopping with %d uncommitted messages", len(items))
                    self._drain_unacked()
                    return False
                delay = min(delay * 2, self.options.retry_backoff_max_s)
        if self.renewer is not None:
            self._answer_certificate_requests(self.renewer, [i.inbound for i in items])
        generation = self._generation
        for item in items:
            # A message from an earlier connection is redelivered by the broker on
            # the new one; acking its old packet id here would ack the wrong message.
            if item.generation == generation:
                self.client.ack(item.mid, item.qos)
        return True

    def _answer_certificate_requests(
        self, renewer: CertificateRenewer, batch: list[Inbound]
    ) -> None:
        """Renewals found in a committed batch, answered with this client's service
        identity; a failure here is logged and never stops the ingest."""
        try:
            for out in renewer.handle(batch):
                self.client.publish(out.topic, out.payload, qos=1)
        except Exception:
            log.exception("ingest: certificate renewal failed")

    def _drain_unacked(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


def wait_connected(worker: IngestWorker, timeout: float) -> bool:
    """Poll until the worker is connected (for CLIs and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.connected:
            return True
        time.sleep(0.05)
    return worker.connected
