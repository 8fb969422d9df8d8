"""The NATS side of ingest: a durable JetStream pull consumer, committed then acknowledged.

Every worker (any number of ``fleet-server ingest`` processes, on any machines) binds to
the same durable consumer (``[nats] durable``) on the stream that holds the devices' QoS 1
publishes (see :mod:`fleet_server.adapters.nats_conn`). A worker fetches a batch, hands it
to the :class:`BatchWriter` and acknowledges it only after the commit. A batch that was
fetched and not acknowledged (the worker died, the database is down, the connection broke)
is redelivered after ``ack_wait_s`` to whichever worker fetches next; the database's
``(device, boot_id, seq)`` key turns a redelivery of what was committed into a no-op.

Nothing here depends on a node: the client reconnects to any node of ``[nats] servers``
(and the nodes it learns of), and the stream and consumer are replicated.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from fleet_server.adapters.nats_conn import (
    MQTT_STREAM,
    NatsOptions,
    acknowledge,
    connect,
    ensure_ingest_consumer,
    publish_to_device,
    replicas_for,
    settle_heap,
    topic_for_subject,
)
from fleet_server.services.clock import Clock, system_clock
from fleet_server.services.ingest import BatchWriter, Inbound
from fleet_server.services.ingest_budget import BudgetPolicy, DeviceBudget
from fleet_server.services.ingest_health import IngestStatus, ReadinessPolicy
from protocol import Kind, ProtocolDecodeError, parse_topic
from protocol.topics import DEVICE_TO_CLOUD

if TYPE_CHECKING:
    from fleet_server.services.renewal import CertificateRenewer

log = logging.getLogger(__name__)


@lru_cache(maxsize=1 << 16)
def _route(subject: str) -> tuple[str, str, Kind | None]:
    """A subject's MQTT topic, device id and kind (kind ``None``: not a device topic)."""
    topic = topic_for_subject(subject)
    try:
        device_id, kind = parse_topic(topic)
    except ProtocolDecodeError:
        return topic, "", None
    return topic, device_id, kind


class NatsIngestWorker:
    """One ingest worker on the durable consumer (same surface as the MQTT worker:
    :meth:`connect`, :meth:`run`, :meth:`stop`, :attr:`connected`, :attr:`status`)."""

    def __init__(
        self,
        writer: BatchWriter,
        options: NatsOptions,
        *,
        name: str = "fleet-ingest",
        clock: Clock = system_clock,
        renewer: CertificateRenewer | None = None,
        budget: BudgetPolicy | None = None,
        retry_backoff_s: float = 0.5,
        retry_backoff_max_s: float = 10.0,
        on_acknowledged: Callable[[int], None] | None = None,
    ) -> None:
        self.writer = writer
        self.options = options
        self.name = name
        self.clock = clock
        self.renewer = renewer
        self.budget = DeviceBudget(budget or BudgetPolicy())
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.status = IngestStatus(clock(), ReadinessPolicy(sys_interval_s=0))
        writer.metrics.status = self.status
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.committed = 0
        """Messages this worker committed (for tests and benches)."""
        self.on_acknowledged = on_acknowledged
        """Called on the worker's thread with the number of messages of a batch once its
        acknowledgement has reached the server (every message fetched, stored or not;
        for benches: the moment a drain ends)."""

    # -- lifecycle -----------------------------------------------------------------

    def connect(self, timeout: float = 30.0) -> None:
        """Start the worker thread (connect, check the stream and consumer, pull) and wait
        up to ``timeout`` for it to be consuming."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._thread_main, name=self.name)
            self._thread.start()
        if not self._connected.wait(timeout):
            log.warning("ingest: NATS not reachable yet; will keep trying")

    @property
    def connected(self) -> bool:
        """True while bound to the consumer over a live connection."""
        return self._connected.is_set()

    def stop(self) -> None:
        """Ask the worker to finish the batch in hand and return."""
        self._stop.set()

    def run(self) -> None:
        """Block until the worker stops (starting it if :meth:`connect` was not called)."""
        if self._thread is None:
            self.connect(timeout=0)
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._connected.clear()

    # -- the loop ------------------------------------------------------------------

    async def _on_disconnect(self) -> None:
        self._connected.clear()
        expected = self._stop.is_set()
        self.status.disconnected(self.clock(), expected=expected)
        if not expected:
            self.writer.metrics.disconnects.labels(reason="nats").inc()
            log.warning("ingest: lost the NATS node; reconnecting to another")

    async def _on_reconnect(self) -> None:
        self.status.connected(self.clock(), persistent=True, session_present=True)
        self._connected.set()
        log.info("ingest: reconnected to NATS")

    async def _setup(self) -> tuple[NatsClient, JetStreamContext]:
        delay = self.retry_backoff_s
        while True:
            try:
                nc = await connect(
                    self.options,
                    self.name,
                    on_disconnect=self._on_disconnect,
                    on_reconnect=self._on_reconnect,
                )
                break
            except (OSError, nats.errors.Error) as exc:
                log.warning("ingest: cannot reach NATS (%s); retry in %.1fs", exc, delay)
            if self._stop.is_set():
                raise asyncio.CancelledError
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_backoff_max_s)
        js = nc.jetstream()
        replicas = replicas_for(self.options, nc)
        while True:
            try:
                await ensure_ingest_consumer(js, self.options, replicas)
                return nc, js
            except (nats.errors.Error, TimeoutError) as exc:
                # A cluster without a JetStream leader yet (starting, or an election).
                log.warning("ingest: stream/consumer not ready (%r); retrying", exc)
            if self._stop.is_set():
                await nc.close()
                raise asyncio.CancelledError
            await asyncio.sleep(self.retry_backoff_s)

    async def _main(self) -> None:
        try:
            nc, js = await self._setup()
        except asyncio.CancelledError:
            return
        sub = await js.pull_subscribe_bind(self.options.durable, MQTT_STREAM)
        settle_heap(self.options.fetch_batch)
        self.status.connected(self.clock(), persistent=True, session_present=True)
        self._connected.set()
        log.info("ingest: pulling from %s/%s", MQTT_STREAM, self.options.durable)
        # One batch is being committed (then acknowledged) while the next is fetched:
        # the database write and the round trips to NATS overlap instead of adding up.
        # Batches still commit one after another, in the order fetched.
        handling: asyncio.Task[None] | None = None
        try:
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(self.options.fetch_batch, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    msgs = []  # nothing to fetch (the client raises either kind)
                except (nats.errors.Error, OSError) as exc:
                    log.warning("ingest: fetch failed (%r); retrying", exc)
                    await asyncio.sleep(self.retry_backoff_s)
                    msgs = []
                if handling is not None and (msgs or handling.done()):
                    await handling  # a worker that failed mid-batch stops here
                    handling = None
                if msgs:
                    handling = asyncio.create_task(self._handle(nc, js, msgs))
            if handling is not None:
                await handling
        finally:
            if handling is not None and not handling.done():
                handling.cancel()
            self._stop.set()
            self._connected.clear()
            try:
                await nc.close()
            except (nats.errors.Error, OSError) as exc:
                log.info("ingest: closing the NATS connection: %r", exc)

    async def _handle(self, nc: NatsClient, js: JetStreamContext, msgs: list[Msg]) -> None:
        now = self.clock()
        batch: list[Inbound] = []
        admit, add = self.budget.admit, batch.append
        for m in msgs:
            topic, device_id, kind = _route(m.subject)
            data = m.data
            if kind is None:
                add(Inbound(topic, data, now))  # rejected and counted as bad_topic
                continue
            if kind not in DEVICE_TO_CLOUD:
                continue  # our own commands share the stream: acknowledged, not stored
            if not admit(device_id, len(data), now):
                self.writer.metrics.rejected.labels(reason="rate_limited").inc()
                continue
            add(Inbound(topic, data, now))
        self.status.received(now)
        if batch and not await self._store(batch):
            self.status.settled(1, self.clock(), committed=False)
            return  # stopping: left unacknowledged, redelivered to another worker
        if self.renewer is not None and batch:
            await self._answer_renewals(js, self.renewer, batch)
        self.committed += len(batch)
        self.status.settled(1, self.clock())
        try:
            await acknowledge(nc, msgs)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            # Committed but maybe not acknowledged: redelivered later, and the dedupe key
            # makes the second write a no-op.
            log.warning("ingest: acknowledging a committed batch failed (%r)", exc)
            return
        if self.on_acknowledged is not None:
            self.on_acknowledged(len(msgs))

    async def _store(self, batch: list[Inbound]) -> bool:
        loop = asyncio.get_running_loop()
        delay = self.retry_backoff_s
        while True:
            try:
                await loop.run_in_executor(None, self.writer.write, batch)
                return True
            except Exception:
                # Nothing is acknowledged until a write succeeds; the batch stays pending.
                self.writer.metrics.db_errors.inc()
                log.exception("ingest: storing a batch failed; retry in %.1fs", delay)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self._stop.is_set():
                    log.warning("ingest: stopping with %d uncommitted messages", len(batch))
                    return False
                await asyncio.sleep(0.05)
            delay = min(delay * 2, self.retry_backoff_max_s)

    async def _answer_renewals(
        self, js: JetStreamContext, renewer: CertificateRenewer, batch: list[Inbound]
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
            for out in await loop.run_in_executor(None, renewer.handle, batch):
                await publish_to_device(js, out.topic, out.payload)
        except Exception:
            log.exception("ingest: certificate renewal failed")
