"""Devices and ingest on a NATS cluster, for the fault tests and the cluster bench.

A :class:`PublishingDevice` is the agent's own :class:`agent.transport.MqttTransport`
(MQTT 3.1.1, the cluster's node list, persistent session, retained will) driven on a
thread like the daemon drives it: it publishes ``count`` telemetry messages and, like the
agent's outbox, sends again after a reconnect whatever was not PUBACKed. ``acked`` is the
set of sequence numbers the cluster acknowledged: what must end up in the database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import nats.errors
from nats.js.errors import NotFoundError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import protocol as p
from agent.transport import MqttSettings, MqttTransport, TransportEvents
from fleet_server.adapters.nats_conn import (
    INGEST_FILTER,
    MQTT_STREAM,
    NatsOptions,
    connect,
    ensure_ingest_consumer,
    replicas_for,
)
from fleet_server.db.models import Device, ReceivedMessage, TelemetrySample
from tests.conftest import wait_for

T0 = 1_780_000_000.0
STALL_S = 5.0


def _nodes(mqtt_urls: Sequence[str]) -> list[tuple[str, int]]:
    out = []
    for url in mqtt_urls:
        parts = urlsplit(url)
        assert parts.hostname
        assert parts.port
        out.append((parts.hostname, parts.port))
    return out


class PublishingDevice(threading.Thread):
    """One device publishing ``count`` telemetry messages at ``interval_s``."""

    def __init__(
        self,
        device_id: str,
        mqtt_urls: Sequence[str],
        *,
        count: int,
        interval_s: float = 0.02,
        first_node: int = 0,
        deadline_s: float = 30.0,
    ) -> None:
        super().__init__(name=f"device-{device_id}", daemon=True)
        nodes = _nodes(mqtt_urls)
        nodes = nodes[first_node:] + nodes[:first_node]
        self.device_id = device_id
        self.count = count
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        self.acked: set[int] = set()
        self.connects = 0
        self.stalls = 0
        """Reconnects because PUBACKs stopped for ``STALL_S`` on a live connection."""
        self._mids: dict[int, int] = {}
        self._sent: set[int] = set()
        self._resend: list[int] = []
        self._lock = threading.Lock()
        events = TransportEvents(on_connected=self._on_connected, on_published=self._on_published)
        settings = MqttSettings(
            host=nodes[0][0],
            port=nodes[0][1],
            client_id=device_id,
            command_topic=p.topic(device_id, p.Kind.COMMAND),
            keepalive=5,
            mqtt_version="3.1.1",
            connect_timeout_s=3.0,
            alternates=tuple(nodes[1:]),
        )
        self.transport = MqttTransport(settings, events)

    def _on_connected(self) -> None:
        with self._lock:
            self.connects += 1
            self._mids.clear()
            self._resend = sorted(self._sent - self.acked)

    def _on_published(self, mid: int, ok: bool) -> None:
        with self._lock:
            seq = self._mids.pop(mid, None)
            if seq is not None and ok:
                self.acked.add(seq)

    def payload(self, seq: int) -> bytes:
        """The telemetry message number ``seq`` (one sample)."""
        sample = p.Sample(ts=T0 + seq, cpu_pct=float(seq % 100), temp_c=40.0)
        return p.encode(
            p.Telemetry(
                device_id=self.device_id, boot_id="b1", seq=seq, ts=T0 + seq, samples=[sample]
            )
        )

    def _send(self, seq: int) -> None:
        mid = self.transport.publish(p.topic(self.device_id, p.Kind.TELEMETRY), self.payload(seq))
        if mid is not None:
            with self._lock:
                self._mids[mid] = seq
                self._sent.add(seq)

    @property
    def done(self) -> bool:
        """Every message was sent and acknowledged."""
        return len(self.acked) >= self.count

    def run(self) -> None:
        t = self.transport
        will = p.encode(
            p.Presence(device_id=self.device_id, boot_id="will", seq=1, ts=T0, state="offline")
        )
        end = time.monotonic() + self.deadline_s
        next_seq, next_at = 1, 0.0
        last_progress, last_progress_at = -1, time.monotonic()
        while not self.done and time.monotonic() < end:
            if not t.busy:
                try:
                    t.connect(p.topic(self.device_id, p.Kind.PRESENCE), will)
                except OSError:
                    time.sleep(0.1)
                    continue
            t.loop(0.01)
            if not t.connected:
                continue
            with self._lock:
                resend, self._resend = self._resend, []
            for seq in resend:
                self._send(seq)
            now = time.monotonic()
            progress = len(self.acked)
            if progress != last_progress:
                last_progress, last_progress_at = progress, now
            elif now - last_progress_at > STALL_S:
                # PUBACKs stopped on a live connection: start again on the next node.
                self.stalls += 1
                t.disconnect()
                last_progress_at = now
                continue
            if next_seq <= self.count and now >= next_at:
                self._send(next_seq)
                next_seq += 1
                next_at = now + self.interval_s
        t.disconnect()


def run_devices(
    devices: Sequence[PublishingDevice], timeout: float = 40.0, *, min_acked: float = 1.0
) -> None:
    """Wait for the devices to finish; at least ``min_acked`` of all their messages must
    have been acknowledged (a message still unacknowledged when a device gives up is
    simply not owed to the database: it is still in the device's outbox)."""
    deadline = time.monotonic() + timeout
    for d in devices:
        d.join(max(0.1, deadline - time.monotonic()))
    acked = sum(len(d.acked) for d in devices)
    missing = {d.device_id: d.count - len(d.acked) for d in devices if not d.done}
    assert acked >= min_acked * sum(d.count for d in devices), f"not PUBACKed: {missing}"


def stored(sessions: sessionmaker[Session]) -> dict[str, list[int]]:
    """``device_id -> sorted seqs`` of the telemetry dedupe keys in the database."""
    with sessions() as s:
        rows = s.execute(
            select(Device.device_id, ReceivedMessage.seq)
            .join(Device, Device.id == ReceivedMessage.device_key)
            .where(ReceivedMessage.boot_id == "b1")
        ).all()
    out: dict[str, list[int]] = {}
    for device_id, seq in rows:
        out.setdefault(device_id, []).append(int(seq))
    return {k: sorted(v) for k, v in out.items()}


def sample_count(sessions: sessionmaker[Session], device_ids: Sequence[str]) -> int:
    """Telemetry rows stored for these devices."""
    with sessions() as s:
        return int(
            s.execute(
                select(func.count())
                .select_from(TelemetrySample)
                .join(Device, Device.id == TelemetrySample.device_key)
                .where(Device.device_id.in_(list(device_ids)))
            ).scalar_one()
        )


async def _setup(options: NatsOptions) -> None:
    nc = await connect(options, "fleet-setup")
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 20
        while True:
            try:
                await ensure_ingest_consumer(js, options, replicas_for(options, nc))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


def setup_consumer(options: NatsOptions) -> None:
    """Create the stream and durable consumer now (the installation step)."""
    asyncio.run(_setup(options))


async def _drop_ingest_consumers(options: NatsOptions) -> int:
    nc = await connect(options, "fleet-teardown")
    try:
        js = nc.jetstream()
        try:
            consumers = await js.consumers_info(MQTT_STREAM)
        except NotFoundError:  # no stream yet: nobody has an interest
            return 0
        ingest = [c.name for c in consumers if c.config.filter_subject == INGEST_FILTER]
        for name in ingest:
            await js.delete_consumer(MQTT_STREAM, name)
        return len(ingest)
    finally:
        await nc.close()


def drop_ingest_consumers(options: NatsOptions, timeout: float = 60.0) -> None:
    """Delete every consumer with the ingest's filter (any durable name) until none is
    left: afterwards no consumer has an interest in device messages. JetStream's API can
    time out for a while after a node restarts (a leader election), so this retries."""

    def none_left() -> bool:
        try:
            return asyncio.run(_drop_ingest_consumers(options)) == 0
        except (nats.errors.Error, TimeoutError):
            return False

    wait_for(none_left, timeout=timeout, interval=0.5)


async def _leader(options: NatsOptions) -> str | None:
    nc = await connect(options, "fleet-probe")
    try:
        info = await nc.jetstream().stream_info(MQTT_STREAM)
        return info.cluster.leader if info.cluster else None
    finally:
        await nc.close()


def stream_leader(options: NatsOptions) -> str | None:
    """The server name of the device-message stream's leader."""
    return asyncio.run(_leader(options))


async def _pending(options: NatsOptions) -> int:
    nc = await connect(options, "fleet-probe")
    try:
        info = await nc.jetstream().consumer_info(MQTT_STREAM, options.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    finally:
        await nc.close()


def pending_messages(options: NatsOptions) -> int:
    """Messages the durable consumer still has to deliver or see acknowledged."""
    return asyncio.run(_pending(options))


async def _ack_pending(options: NatsOptions) -> int:
    nc = await connect(options, "fleet-probe")
    try:
        info = await nc.jetstream().consumer_info(MQTT_STREAM, options.durable)
        return int(info.num_ack_pending or 0)
    finally:
        await nc.close()


def ack_pending(options: NatsOptions) -> int:
    """Messages delivered to a worker and not yet acknowledged (a batch in hand)."""
    return asyncio.run(_ack_pending(options))
