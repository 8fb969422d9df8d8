"""The MQTT side of ingest: a paho subscriber that acks only what the database committed.

paho runs its network loop in a thread and puts each message on a queue; the worker
thread takes batches off the queue, hands them to the :class:`BatchWriter`, and after the
commit acknowledges them (``manual_ack``). The session is persistent (MQTT 5
``clean_start=False`` with a session expiry, or MQTT 3.1.1 ``clean_session=False``), so
whatever was not acknowledged when the worker died is delivered again when it comes back,
and the database's dedupe key makes the redelivery harmless.

Fairness: every device has a budget (:mod:`fleet_server.services.ingest_budget`). A
message over it is acknowledged at once in the network thread and never queued, so a
flooding device drains at broker speed and cannot fill the session queue where the broker
would drop other devices' messages; the excess is counted, alarmed on and logged.

Health: the worker records connects, disconnects, the broker's ``$SYS`` heartbeat and its
progress in an :class:`IngestStatus` (``/healthz``, ``/readyz``), and logs an ERROR when
another client takes its client id or the broker drops messages.

Several workers can share the load through an MQTT 5 shared subscription
(``$share/<group>/fleet/v1/+/<kind>``). On an MQTT 3.1.1 broker (the embedded one) run a
single worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import SQLAlchemyError

from fleet_server.adapters.mqtt_url import ClientTls
from fleet_server.services.alarms import apply_throttle_reports, throttled_devices
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.ingest_budget import BudgetPolicy, DeviceBudget, ThrottleLedger
from fleet_server.services.ingest_health import SYS_TOPICS, IngestStatus, ReadinessPolicy

if TYPE_CHECKING:
    from fleet_server.services.renewal import CertificateRenewer
from protocol import Kind, ProtocolDecodeError, parse_topic, shared_subscription, subscription

log = logging.getLogger(__name__)

INGEST_KINDS = (Kind.TELEMETRY, Kind.EVENT, Kind.PRESENCE)
SESSION_TAKEN_OVER = 142
"""MQTT 5 reason 0x8E (sent by Mosquitto from 2.0.15 on; 2.0.11 just closes)."""


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
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    readiness: ReadinessPolicy = field(default_factory=ReadinessPolicy)


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
        self.budget = DeviceBudget(options.budget)
        self._budget_lock = threading.Lock()
        self.ledger = ThrottleLedger()
        self.status = IngestStatus(clock(), options.readiness)
        writer.metrics.status = self.status
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

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("ingest: broker refused the connection: %s", reason)
            return
        self._generation += 1
        verdict = self.status.connected(
            self.clock(), persistent=True, session_present=bool(flags.session_present)
        )
        o = self.options
        if verdict.session_lost:
            self.writer.metrics.session_lost.inc()
            log.error(
                "ingest: reconnected as %r but the broker no longer has its persistent "
                "session: messages queued for it may be lost (another client using id %r "
                "with a clean session, or a broker restart without persistence)",
                o.client_id,
                o.client_id,
            )
        if verdict.displaced:
            self._displaced(f"{verdict.recent_disconnects} unexpected disconnects in a row")
        client.subscribe([(t, 1) for t in self._topics()] + [(t, 0) for t in SYS_TOPICS])
        self._connected.set()
        log.info("ingest: connected to %s:%s as %r", o.host, o.port, o.client_id)

    def _displaced(self, evidence: str) -> None:
        self.writer.metrics.displaced.inc()
        log.error(
            "ingest: session taken over by another client using id %r (%s); reconnecting "
            "with the same identity. Reserve the id for the service certificate "
            "(use_username_as_clientid) and find the other client.",
            self.options.client_id,
            evidence,
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        expected = self._stop.is_set()
        self.status.disconnected(self.clock(), expected=expected)
        if expected:
            return
        code = int(getattr(reason, "value", reason) or 0)
        self.writer.metrics.disconnects.labels(reason=str(code)).inc()
        if code == SESSION_TAKEN_OVER:
            self._displaced("reason 0x8E session taken over")
        else:
            log.warning("ingest: lost the broker (%s); reconnecting", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = self.clock()
        if msg.topic.startswith("$SYS/"):
            self._broker_stat(msg.topic, bytes(msg.payload), now)
            return
        try:
            device_id: str | None = parse_topic(msg.topic)[0]
        except ProtocolDecodeError:
            device_id = None  # the writer rejects it, counted as bad_topic
        if device_id is not None:
            with self._budget_lock:
                admitted = self.budget.admit(device_id, len(msg.payload), now)
            if not admitted:
                # Over budget: acknowledged here and never queued (counted in run()).
                self.client.ack(msg.mid, msg.qos)
                return
        self.status.received(now)
        self._queue.put(
            _Pending(
                Inbound(msg.topic, bytes(msg.payload), self.clock()),
                msg.mid,
                msg.qos,
                self._generation,
            )
        )

    def _broker_stat(self, topic: str, payload: bytes, now: float) -> None:
        rose = self.status.heartbeat(topic, payload, now)
        b = self.status.broker
        m = self.writer.metrics
        if b.dropped is not None:
            m.broker_dropped.set(b.dropped)
        if b.store_bytes is not None:
            m.broker_store_bytes.set(b.store_bytes)
        if b.clients_connected is not None:
            m.broker_clients.set(b.clients_connected)
        if rose:
            log.error(
                "broker dropped %d messages (total %d since it started): a session queue "
                "is full (max_queued_bytes) and acknowledged device data is being lost",
                rose,
                b.dropped,
            )

    def _report_throttled(self) -> None:
        """Count, log and alarm on the messages found over budget since the last call."""
        with self._budget_lock:
            excess = self.budget.take_excess()
        now = self.clock()
        news = self.ledger.add(excess, now)
        total = sum(e.messages for e in excess.values())
        if total:
            self.writer.metrics.rejected.labels(reason="rate_limited").inc(total)
        b = self.options.budget
        limit = f"{b.messages_per_s:g} msg/s burst {b.message_burst}, {b.bytes_per_s:g} B/s"
        for device_id, e in news.warn.items():
            log.warning(
                "ingest: device %s over its budget (%s): %d messages, %d bytes acknowledged "
                "and not stored",
                device_id,
                limit,
                e.messages,
                e.bytes,
            )
        if news.alarm or news.close:
            try:
                apply_throttle_reports(
                    self.writer.sessions,
                    {d: (e.messages, e.bytes) for d, e in news.alarm.items()},
                    news.close,
                    now,
                    limit,
                )
            except Exception:
                log.exception("ingest: could not record the rate-limit alarms")

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
            with self.writer.sessions() as session:
                self.ledger.watch(throttled_devices(session), self.clock())
        except Exception:
            log.exception("ingest: could not read the open rate-limit alarms")
        try:
            while not self._stop.is_set():
                self._step(timeout=0.2)
                self._report_throttled()
            self._report_throttled()
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
                    dropped = len(items) + self._drain_unacked()
                    self.status.settled(dropped, self.clock(), committed=False)
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
        self.status.settled(len(items), self.clock())
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

    def _drain_unacked(self) -> int:
        n = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return n
            n += 1


def wait_connected(worker: IngestWorker, timeout: float) -> bool:
    """Poll until the worker is connected (for CLIs and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.connected:
            return True
        time.sleep(0.05)
    return worker.connected
