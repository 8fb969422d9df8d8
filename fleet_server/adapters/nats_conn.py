"""NATS plumbing shared by the ingest and the command publisher on the NATS back-end.

How device traffic looks on NATS (measured on nats-server 2.9): a device's MQTT topic
``fleet/v1/<id>/<kind>`` is the NATS subject ``fleet.v1.<id>.<kind>``. Every QoS 1 publish
of an MQTT client is stored, *before* the server sends the PUBACK, in the server's own
JetStream stream ``$MQTT_msgs`` under ``$MQTT.msgs.<subject>`` (interest retention: a
message stays while a consumer with a matching filter has not acknowledged it). The retained
presence and the last will land there as well.

So the ingest does not capture the core subjects into a stream of its own (that capture is
not acknowledged to the device: a PUBACK would not mean "stored for the ingest"); it holds
one durable pull consumer on ``$MQTT_msgs`` filtered to ``$MQTT.msgs.fleet.v1.>``. Once
that consumer exists, every PUBACKed device message is kept until an ingest worker
acknowledges it, whether or not any worker is running.

Commands take the same path the other way: a JetStream publish to
``$MQTT.msgs.fleet.v1.<id>.command`` with the header ``Nmqtt-Pub: 1`` is acknowledged by the
replicated stream and delivered with QoS 1 to the device's MQTT session, online or offline
(a plain NATS publish would reach only an online device, as QoS 0).

The MQTT side of nats-server 2.9 refuses topics containing ``.`` or a space (the client is
disconnected), so a device id with a ``.`` cannot use this back-end:
:func:`subject_for_topic` refuses it with a clear error.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from fleet_server.errors import InvalidInputError

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"
MQTT_PREFIX = "$MQTT.msgs."
INGEST_FILTER = f"{MQTT_PREFIX}fleet.v1.>"
MQTT_QOS_HEADER = "Nmqtt-Pub"
_T = TypeVar("_T")


@dataclass(frozen=True)
class NatsOptions:
    """How the server's NATS clients connect and consume (from ``[nats]``)."""

    servers: list[str]
    credentials: Path | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    durable: str = "fleet-ingest"
    replicas: int = 0
    fetch_batch: int = 2000
    ack_wait_s: float = 30.0
    max_ack_pending: int = 40000

    def tls_context(self) -> ssl.SSLContext | None:
        """Verify the servers with ``tls_ca`` and present our certificate when set."""
        if self.tls_ca is None and not any(s.startswith("tls://") for s in self.servers):
            return None
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(self.tls_ca) if self.tls_ca else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.tls_cert is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key) if self.tls_key else None)
        return context


def subject_for_topic(topic: str) -> str:
    """The NATS subject of an MQTT topic; refuses what the server's MQTT cannot carry."""
    if "." in topic or " " in topic:
        raise InvalidInputError(
            "unmappable_device_id",
            f"topic {topic[:120]!r} contains '.' or a space, which the NATS MQTT listener "
            "refuses: a device whose id has a '.' cannot use the [nats] back-end "
            "(rename it, or keep it on Mosquitto)",
        )
    return topic.replace("/", ".")


@lru_cache(maxsize=1 << 16)
def topic_for_subject(subject: str) -> str:
    """The MQTT topic of a subject (``$MQTT.msgs.`` prefix dropped); ``//`` is a ``.``
    (how newer servers encode it). Remembered for the last 65,536 subjects."""
    if subject.startswith(MQTT_PREFIX):
        subject = subject[len(MQTT_PREFIX) :]
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


async def connect(
    options: NatsOptions,
    name: str,
    *,
    on_disconnect: Callable[[], Awaitable[None]] | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connect to any of the servers, reconnecting forever to any node of the cluster."""

    async def error_cb(exc: Exception) -> None:
        log.warning("nats (%s): %s", name, exc)

    kwargs: dict[str, Any] = {
        "servers": options.servers,
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "error_cb": error_cb,
    }
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect
    if options.credentials is not None:
        kwargs["user_credentials"] = str(options.credentials)
    if options.user is not None:
        kwargs["user"] = options.user
        kwargs["password"] = options.password or ""
    tls = options.tls_context()
    if tls is not None:
        kwargs["tls"] = tls
    return await nats.connect(**kwargs)


def replicas_for(options: NatsOptions, nc: NatsClient) -> int:
    """Configured replicas, or 3 when the server is part of a cluster and 1 alone."""
    if options.replicas:
        return options.replicas
    info = getattr(nc, "_server_info", {}) or {}
    return 3 if info.get("cluster") else 1


async def ensure_ingest_consumer(js: JetStreamContext, options: NatsOptions, replicas: int) -> None:
    """Create or check the device-message stream and the ingest's durable consumer.

    The stream is created with the configuration nats-server gives it when the first MQTT
    client connects (so the order of first start does not matter); an existing one is
    checked, and fewer replicas than asked is logged (the server's ``mqtt.stream_replicas``
    decides them when it created the stream). An existing consumer is brought to the
    configured limits and up to ``replicas`` (no more than the stream has).
    """
    stream_replicas = replicas
    try:
        info = await js.stream_info(MQTT_STREAM)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=MQTT_STREAM,
                subjects=[f"{MQTT_PREFIX}>"],
                retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
                num_replicas=replicas,
            )
        )
        log.info("created stream %s (replicas %d)", MQTT_STREAM, replicas)
    else:
        if info.config.retention != RetentionPolicy.INTEREST:
            raise RuntimeError(f"stream {MQTT_STREAM} is not an interest stream; not the MQTT one")
        stream_replicas = info.config.num_replicas or 1
        if stream_replicas < replicas:
            log.warning(
                "stream %s has %s replicas, fewer than %d: set mqtt { stream_replicas: %d } "
                "on the servers before the first device connects",
                MQTT_STREAM,
                info.config.num_replicas,
                replicas,
                replicas,
            )
    wanted = ConsumerConfig(
        durable_name=options.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        filter_subject=INGEST_FILTER,
        ack_wait=options.ack_wait_s,
        max_ack_pending=options.max_ack_pending,
        max_deliver=-1,
        num_replicas=replicas,
    )
    try:
        current = await js.consumer_info(MQTT_STREAM, options.durable)
    except NotFoundError:
        await js.add_consumer(MQTT_STREAM, wanted)
        log.info("created durable consumer %s on %s", options.durable, MQTT_STREAM)
        return
    if current.config.filter_subject != INGEST_FILTER:
        raise RuntimeError(
            f"consumer {options.durable} exists with filter {current.config.filter_subject!r}, "
            f"not {INGEST_FILTER!r}: delete it or choose another nats.durable"
        )
    await _apply_limits(js, current.config, options, replicas, stream_replicas)


async def _apply_limits(
    js: JetStreamContext,
    have: ConsumerConfig,
    options: NatsOptions,
    replicas: int,
    stream_replicas: int,
) -> None:
    """Bring an existing consumer's ``ack_wait`` and ``max_ack_pending`` to the
    configuration's, and its replicas up to ``replicas`` but no more than the stream's
    ``stream_replicas``. A consumer keeps what it was created with: a raised
    ``max_ack_pending`` for more workers, or a new default, never reached a running
    deployment, and a consumer created on one node kept a single copy of its
    acknowledgement state after the cluster grew to three. More replicas than asked are
    left alone, as are its other settings; a refused update is logged and the ingest goes
    on with the consumer as it is."""
    changes = []
    if abs((have.ack_wait or 0.0) - options.ack_wait_s) > 1e-3:
        changes.append(f"ack_wait {have.ack_wait} -> {options.ack_wait_s} s")
    if have.max_ack_pending != options.max_ack_pending:
        changes.append(f"max_ack_pending {have.max_ack_pending} -> {options.max_ack_pending}")
    has = have.num_replicas or stream_replicas  # 0: as many as the stream
    copies = max(has, min(replicas, stream_replicas))
    if copies != has:
        changes.append(f"replicas {has} -> {copies}")
    if not changes:
        return
    what = ", ".join(changes)
    wanted = replace(
        have,
        ack_wait=options.ack_wait_s,
        max_ack_pending=options.max_ack_pending,
        num_replicas=copies if copies != has else have.num_replicas,
    )
    try:
        await js.add_consumer(MQTT_STREAM, wanted)
    except nats.errors.Error as exc:
        log.warning("consumer %s keeps its limits (%s refused: %s)", options.durable, what, exc)
        return
    log.info("updated consumer %s: %s", options.durable, what)


YOUNG_GENERATION_THRESHOLD = 10_000
"""Net allocations of tracked objects between two collections of the youngest
generation once the heap is settled, at least (CPython's default is 700)."""

TRACKED_PER_FETCHED_MESSAGE = 24
"""The youngest generation's threshold per message of ``fetch_batch``. With one batch
being written while the next is fetched, the batches in hand held about 8 tracked
objects per message with one sample a message, 11 with six (the agent's default) and
15 with ten (``test_a_settled_worker_does_not_collect_on_every_batch``; protocol
messages are not tracked themselves, see :class:`protocol.messages.Envelope`): this
covers up to about fifteen samples a message. Beyond that a collection comes back about
once a batch, as before."""


def young_threshold(fetch_batch: int) -> int:
    """The youngest generation's threshold for a consumer fetching ``fetch_batch``
    messages at a time: above what its batches in hand hold, so that a collection
    happens when garbage has piled up rather than on every batch."""
    return max(YOUNG_GENERATION_THRESHOLD, TRACKED_PER_FETCHED_MESSAGE * fetch_batch)


def settle_heap(fetch_batch: int) -> None:
    """Put every object allocated so far (modules, table metadata, the connection) out of
    the cyclic garbage collector's reach, and collect the youngest generation every
    :func:`young_threshold` net allocations instead of 700.

    A consumer allocates several short-lived objects per message. Without the freeze
    every full collection also walks the whole start-up heap again (about a tenth of a
    worker's CPU per message). With a threshold below what the batches in hand hold
    (one batch being written, the next fetched), every batch set off a collection that
    traversed them all again: 1.3 to 2.2 µs of a worker's CPU per message at 10,000
    (measured with ``gc.callbacks`` on ``bench/ingest_cluster.py``; the raw consumer,
    which holds one batch, none), and about 1.7 µs at CPython's default of 700 before.

    Both are process-wide: in the all-in-one ``fleet-server run`` they cover the API too.
    That is safe: garbage is collected first, frozen objects are still freed by reference
    counting when dropped, and only a reference cycle among them (start-up state, which
    lives as long as the process anyway) would stay allocated. Garbage in reference
    cycles made later waits for at most that many net allocations of tracked objects
    (48,000 at the default ``fetch_batch``, 240,000 at its largest) instead of 700,
    together with whatever those objects hold."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold(fetch_batch), *gc.get_threshold()[1:])


async def acknowledge(nc: NatsClient, msgs: list[Msg]) -> None:
    """Acknowledge ``msgs`` (an empty publish to each one's reply subject, which is what
    ``Msg.ack`` sends) and flush them to the server in one write. The ingest workers
    and the bench's raw consumer use this same path."""
    publish = nc.publish
    for m in msgs:
        await publish(m.reply)
    await nc.flush(timeout=5)


async def publish_to_device(js: JetStreamContext, topic: str, payload: bytes) -> None:
    """Store a QoS 1 message for the device's MQTT session; return once replicated."""
    subject = MQTT_PREFIX + subject_for_topic(topic)
    await js.publish(subject, payload, headers={MQTT_QOS_HEADER: "1"}, timeout=5)


class LoopThread:
    """An asyncio loop on a daemon thread, for sync callers of the async client."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run ``coro`` on the loop and wait for its result (cancelled on timeout)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and let the thread end."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
