"""Live mode: every simulated device keeps its own MQTT connection, one event loop for all.

:class:`LiveEngine` drives many :class:`~simulator.device.SimDevice` against a real broker
from a single asyncio event loop: each device has its own paho-mqtt client (MQTT 5,
QoS 1, retained ``offline`` last will, subscribed to its command topic), and the paho
clients are driven from the loop's socket callbacks (``loop_read`` / ``loop_write`` when a
socket is readable / writable, one shared timer calling ``loop_misc`` for keepalives):
no thread per device, no paho threads.

Time is real or scaled (``speed`` × real time); each device wakes when it has something
to do (a hardware tick, a sample, a publish) from a heap, so idle devices cost nothing.
Delivery follows the agent daemon: the outbox is sent in seq order within an in-flight
window of 20 and a message leaves it only at its PUBACK; a lost connection resends from
the outbox after a reconnect with exponential backoff and jitter.

Scenario partitions and broker outages close the device's socket abruptly (no
DISCONNECT), so the broker publishes the device's last will, as it does when a link dies;
it does so at once rather than after the keepalive. Connection attempts are spread at
``connect_rate`` per second so a large fleet does not flood the broker's accept queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import logging
import random
import resource
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from protocol import Kind
from simulator.device import SimDevice
from simulator.engine import FleetSnapshot, snapshot

log = logging.getLogger(__name__)

INFLIGHT_WINDOW = 20
"""Outbox messages in flight per device (the daemon's window)."""

_PROTOCOL_NAMES = {mqtt.MQTTv5: "MQTT 5", mqtt.MQTTv311: "MQTT 3.1.1", mqtt.MQTTv31: "MQTT 3.1"}


@dataclass(slots=True)
class _Conn:
    """One device's connection state."""

    client: mqtt.Client | None = None
    connected: bool = False
    inflight: dict[int, int] = field(default_factory=dict)
    reconnect_at: float = 0.0
    boot: int = 0
    attempt: int = 0
    queued: bool = False
    connecting_since: float | None = None
    """Loop time the CONNECT went out, until its CONNACK (None otherwise)."""


@dataclass
class LiveStats:
    """Connection-level counters of a live run."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    aborted: int = 0
    commands: int = 0
    device_errors: int = 0
    last_failure: str = ""
    """Why the latest connection attempt failed (shown while nothing connects)."""
    protocol: str = "MQTT 5"
    """The MQTT version devices speak now (``MQTT 3.1.1`` after a fallback)."""
    notices: list[str] = field(default_factory=list)
    """Loud, one-off events of the run (a protocol fallback), in order."""
    late_s: float = 0.0
    """Largest delay (real seconds) between a device's due time and its handling since
    the last :meth:`LiveEngine.take_lateness` (how far the loop is behind)."""


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


class LiveEngine:
    """Runs devices against a real MQTT broker on one asyncio event loop."""

    def __init__(
        self,
        devices: Sequence[SimDevice],
        host: str,
        port: int,
        *,
        start: float,
        speed: float = 1.0,
        connect_rate: float = 500.0,
        misc_interval_s: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        seed: int = 0,
        mqtt_protocol: int = mqtt.MQTTv5,
        fallback_311: bool = True,
        connack_timeout_s: float = 5.0,
    ) -> None:
        """``mqtt_protocol``: ``mqtt.MQTTv5`` (default) or ``mqtt.MQTTv311`` for brokers
        that speak only 3.1.1 (the fleet server's embedded broker).

        With MQTT 5 and ``fallback_311``, one device probes the broker first: if the
        broker refuses MQTT 5 (a protocol refusal, or no CONNACK within
        ``connack_timeout_s``, which is what amqtt does), the whole fleet falls back to
        3.1.1 and says so in :attr:`LiveStats.notices`; nobody floods a broker with
        CONNECTs it cannot parse."""
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.devices = list(devices)
        self.host, self.port = host, port
        self.start = start
        self.speed = speed
        self.connect_rate = connect_rate
        self.misc_interval_s = misc_interval_s
        self.username, self.password = username, password
        self.mqtt_protocol = mqtt_protocol
        self.fallback_311 = fallback_311 and mqtt_protocol == mqtt.MQTTv5
        self.connack_timeout_s = connack_timeout_s
        self._probing = self.fallback_311
        self.conns = [_Conn() for _ in self.devices]
        for i, device in enumerate(self.devices):
            device.index = i
        self.stats = LiveStats(protocol=_PROTOCOL_NAMES.get(mqtt_protocol, "MQTT"))
        self._rng = random.Random(seed)
        self._connect_queue: deque[int] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._stopping = False
        self._stop_requested = False
        raise_fd_limit(len(self.devices) + 256)

    def take_lateness(self) -> float:
        """The loop's largest lateness since the last call (real seconds), then reset."""
        late, self.stats.late_s = self.stats.late_s, 0.0
        return late

    def request_stop(self) -> None:
        """End :meth:`run` early (it still stops every agent cleanly)."""
        self._stop_requested = True

    # --- Link (what SimDevice calls) -------------------------------------------------

    def up(self, device: SimDevice) -> bool:
        """True while the device's MQTT connection is established (and belongs to the
        device's current boot: a device that just lost power or rebooted sends nothing)."""
        conn = self.conns[device.index]
        return conn.connected and device.running and conn.boot == device.boot_number

    def window(self, device: SimDevice) -> int:
        """Room left in the device's in-flight window."""
        return INFLIGHT_WINDOW - len(self.conns[device.index].inflight)

    def deliver(
        self, device: SimDevice, kind: Kind, payload: bytes, retain: bool, seq: int | None
    ) -> bool:
        """Publish at QoS 1; outbox messages are acked to the device at their PUBACK."""
        conn = self.conns[device.index]
        if conn.client is None or not conn.connected:
            return False
        info = conn.client.publish(device.topics[kind], payload, qos=1, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if seq is not None:
            conn.inflight[info.mid] = seq
        return True

    # --- time --------------------------------------------------------------------------

    def sim_now(self) -> float:
        """Simulated true time now."""
        assert self._loop is not None
        return self.start + (self._loop.time() - self._t0) * self.speed

    # --- connections -------------------------------------------------------------------

    def _manage(self, i: int, real_now: float) -> None:
        device, conn = self.devices[i], self.conns[i]
        wanted = device.link_allowed() and not self._stopping
        if conn.client is not None and (not wanted or conn.boot != device.boot_number):
            self._abort(i)  # partition, outage, power cut or reboot: the connection dies
        if wanted and conn.client is None and not conn.queued and real_now >= conn.reconnect_at:
            conn.queued = True
            self._connect_queue.append(i)

    def _backoff(self, conn: _Conn) -> None:
        cap = min(60.0, 1.0 * 2.0**conn.attempt)
        conn.attempt = min(conn.attempt + 1, 16)
        assert self._loop is not None
        conn.reconnect_at = self._loop.time() + 0.5 + self._rng.random() * max(cap - 0.5, 0.0)

    def _connect(self, i: int) -> None:
        device, conn = self.devices[i], self.conns[i]
        conn.queued = False
        if conn.client is not None or not device.link_allowed() or self._stopping:
            return
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device.device_id,
            protocol=self.mqtt_protocol,
            userdata=i,
        )
        client.max_inflight_messages_set(INFLIGHT_WINDOW + 4)
        client.max_queued_messages_set(0)
        if self.username:
            client.username_pw_set(self.username, self.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.will_set(device.topics[Kind.PRESENCE], device.will_payload(), qos=1, retain=True)
        conn.client = client
        conn.boot = device.boot_number
        assert self._loop is not None
        conn.connecting_since = self._loop.time()
        try:
            if self.mqtt_protocol == mqtt.MQTTv5:
                client.connect(
                    self.host, self.port, keepalive=device.settings.keepalive_s, clean_start=True
                )
            else:
                client.connect(self.host, self.port, keepalive=device.settings.keepalive_s)
        except (OSError, ValueError) as exc:
            log.debug("%s: cannot connect: %s", device.device_id, exc)
            reason = getattr(exc, "strerror", None) or str(exc)
            self._connect_failed(i, client, f"cannot reach {self.host}:{self.port}: {reason}")

    def _connect_failed(
        self, i: int, client: mqtt.Client, reason: str, *, protocol: bool = False
    ) -> None:
        """A connection attempt failed before its CONNACK: count it, keep the reason, back
        off; a protocol-level failure while probing MQTT 5 switches the fleet to 3.1.1."""
        conn = self.conns[i]
        self.stats.connect_failures += 1
        self.stats.last_failure = reason
        self._close_socket(client)
        if conn.client is client:
            conn.client = None
        conn.connecting_since = None
        if protocol and self._probing and self.mqtt_protocol == mqtt.MQTTv5:
            self.mqtt_protocol = mqtt.MQTTv311
            self.stats.protocol = _PROTOCOL_NAMES[mqtt.MQTTv311]
            notice = f"broker refused MQTT 5 ({reason}); retrying with MQTT 3.1.1"
            self.stats.notices.append(notice)
            log.warning("%s", notice)
            conn.reconnect_at = 0.0  # retry at once, in 3.1.1
            return
        self._backoff(conn)

    def _close_socket(self, client: mqtt.Client) -> None:
        sock = client.socket()
        if sock is None or self._loop is None:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _abort(self, i: int) -> None:
        """Cut the link without DISCONNECT (the broker then sends the last will)."""
        conn = self.conns[i]
        client, conn.client = conn.client, None
        if client is not None:
            self._close_socket(client)
        was = conn.connected
        conn.connected = False
        conn.inflight.clear()
        self.stats.aborted += 1
        if was:
            self.devices[i].on_disconnected()

    # --- paho callbacks (called from loop_read / loop_write / loop_misc) ---------------

    def _on_socket_open(self, client: mqtt.Client, i: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, client.loop_read)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)

    def _on_socket_close(self, client: mqtt.Client, i: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _on_register_write(self, client: mqtt.Client, i: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, i: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)

    def _on_connect(self, client: mqtt.Client, i: int, flags: Any, reason: Any, props: Any) -> None:
        conn, device = self.conns[i], self.devices[i]
        if client is not conn.client:
            return
        if reason.is_failure:
            log.warning("%s: broker refused the connection: %s", device.device_id, reason)
            self._connect_failed(
                i,
                client,
                f"broker refused the connection: {reason}",
                protocol=_is_protocol_refusal(reason),
            )
            return
        conn.connected = True
        conn.connecting_since = None
        self._probing = False
        conn.attempt = 0
        self.stats.connects += 1
        client.subscribe(device.topics[Kind.COMMAND], qos=1)
        device.on_connected()
        device.pump(self)

    def _on_disconnect(
        self, client: mqtt.Client, i: int, flags: Any, reason: Any, props: Any
    ) -> None:
        conn = self.conns[i]
        if client is not conn.client:
            return
        if not conn.connected and not self._stopping:  # closed before its CONNACK
            self._connect_failed(
                i, client, f"broker closed the connection before CONNACK ({reason})", protocol=True
            )
            return
        conn.client = None
        was, conn.connected = conn.connected, False
        conn.inflight.clear()
        self._close_socket(client)
        if was:
            self.stats.disconnects += 1
            self.devices[i].on_disconnected()
        self._backoff(conn)

    def _on_publish(self, client: mqtt.Client, i: int, mid: int, reason: Any, props: Any) -> None:
        conn = self.conns[i]
        if client is not conn.client:
            return
        seq = conn.inflight.pop(mid, None)
        if seq is not None:
            device = self.devices[i]
            device.acked([seq])
            device.pump(self)

    def _on_message(self, client: mqtt.Client, i: int, message: mqtt.MQTTMessage) -> None:
        if client is not self.conns[i].client:
            return
        self.stats.commands += 1
        device = self.devices[i]
        device.on_command(bytes(message.payload))
        device.handle_commands(self)
        device.pump(self)

    # --- tasks -------------------------------------------------------------------------

    async def _connector(self) -> None:
        """Open queued connections at ``connect_rate`` per second."""
        batch = max(1, int(self.connect_rate / 20))
        while True:
            if self._probing:  # one device finds out which MQTT version the broker speaks
                if self._connect_queue and not any(c.client for c in self.conns):
                    self._connect(self._connect_queue.popleft())
            else:
                for _ in range(min(batch, len(self._connect_queue))):
                    self._connect(self._connect_queue.popleft())
            await asyncio.sleep(0.05)

    async def _misc(self) -> None:
        """Keepalive pings and timeouts for every client."""
        while True:
            await asyncio.sleep(self.misc_interval_s)
            assert self._loop is not None
            now = self._loop.time()
            for i, conn in enumerate(self.conns):
                client = conn.client
                if client is None:
                    continue
                since = conn.connecting_since
                # a short wait while probing MQTT 5, the keepalive once the broker has answered
                limit = (
                    self.connack_timeout_s if self._probing else max(30.0, self.connack_timeout_s)
                )
                if since is not None and now - since > limit:
                    self._connect_failed(
                        i,
                        client,
                        f"no CONNACK within {limit:g} s",
                        protocol=True,
                    )
                    continue
                rc = client.loop_misc()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and conn.client is client:
                    self._on_disconnect(client, i, None, None, None)
                if i % 500 == 499:
                    await asyncio.sleep(0)

    async def run(
        self,
        until: float,
        *,
        progress: Callable[[FleetSnapshot, LiveStats], None] | None = None,
        progress_interval_s: float = 1.0,
        drain_s: float = 10.0,
    ) -> FleetSnapshot:
        """Run until simulated time ``until``, then stop every agent cleanly: flush the
        pending batch, deliver for up to ``drain_s``, send ``offline``, disconnect."""
        loop = self._loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        # The fleet is a large, long-lived object graph: keep it out of the cyclic GC's
        # full collections, which would otherwise stall the loop for seconds at 10k devices.
        gc.collect()
        gc.freeze()
        heap = [(d.next_wake(), i) for i, d in enumerate(self.devices)]
        heapq.heapify(heap)
        for i in range(len(self.devices)):
            self._manage(i, loop.time())
        tasks = [loop.create_task(self._connector()), loop.create_task(self._misc())]
        next_progress = loop.time()
        try:
            while True:
                now = self.sim_now()
                if now >= until or self._stop_requested:
                    break
                handled = 0
                while heap and heap[0][0] <= now:
                    due, i = heapq.heappop(heap)
                    late = (now - due) / self.speed
                    if late > self.stats.late_s:
                        self.stats.late_s = late
                    device = self.devices[i]
                    try:
                        device.advance_to(now, self)
                        self._manage(i, loop.time())
                        device.pump(self)
                    except Exception:  # one device's bug must not stop the fleet
                        self.stats.device_errors += 1
                        log.exception("%s: error while advancing the device", device.device_id)
                        device.t = max(device.t, now)
                    heapq.heappush(heap, (device.next_wake(), i))
                    handled += 1
                    if handled % 200 == 0:
                        await asyncio.sleep(0)
                        now = self.sim_now()
                if progress is not None and loop.time() >= next_progress:
                    progress(snapshot(self.devices, now), self.stats)
                    next_progress = loop.time() + progress_interval_s
                wait = 0.25
                if heap:
                    wait = min(wait, max((heap[0][0] - self.sim_now()) / self.speed, 0.0))
                await asyncio.sleep(wait)
            final_time = self.sim_now()
            await self._shutdown(drain_s)
            return snapshot(self.devices, final_time)
        finally:
            gc.unfreeze()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for i, conn in enumerate(self.conns):
                if conn.client is not None:
                    self._abort(i)

    async def _shutdown(self, drain_s: float) -> None:
        assert self._loop is not None
        self._stopping = True
        for device in self.devices:
            device.stop()
            device.pump(self)
        deadline = self._loop.time() + drain_s
        while self._loop.time() < deadline:
            busy = any(
                c.connected and (d.outbox.depth() > 0 or c.inflight)
                for c, d in zip(self.conns, self.devices, strict=True)
            )
            if not busy:
                break
            await asyncio.sleep(0.05)
        for i, (conn, device) in enumerate(zip(self.conns, self.devices, strict=True)):
            client = conn.client
            if client is None:
                continue
            if conn.connected:
                device.say_offline()
                device.pump(self)
                conn.connected = False  # our own DISCONNECT is not a lost link
                client.disconnect()
            if i % 500 == 499:
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # let the DISCONNECT packets go out


def _is_protocol_refusal(reason: Any) -> bool:
    """True for a CONNACK saying the broker does not speak this protocol version."""
    text = str(reason).lower()
    return "protocol" in text or "unsupported" in text


__all__ = ["INFLIGHT_WINDOW", "LiveEngine", "LiveStats", "raise_fd_limit"]
