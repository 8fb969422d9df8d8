"""Is the ingest doing its job? Connection state, broker heartbeat and progress, judged.

The MQTT adapter records what it observes in an :class:`IngestStatus` (connects,
disconnects, the broker's ``$SYS`` heartbeat, messages received and committed); the API
reads it through ``IngestMetrics.status`` and asks :func:`readiness` for the reasons the
ingest is not ready (``/readyz`` answers 503 with them, ``/healthz`` shows them).

Why this exists: on Mosquitto 2.0.11 a client that connects with the ingest's client id
takes its session, and the displaced ingest sees only an "unspecified error" disconnect
(the 0x8E "session taken over" reason is sent from 2.0.15 on). The signs it leaves are
repeated unexpected disconnects each followed by a successful reconnect (flapping), and a
reconnect with ``clean_start=False`` that finds no stored session. Both are detected here.

Pure apart from a lock: time comes in as an argument.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SYS_TOPICS = {
    "$SYS/broker/uptime": "uptime_s",
    "$SYS/broker/publish/messages/dropped": "dropped",
    "$SYS/broker/store/messages/bytes": "store_bytes",
    "$SYS/broker/clients/connected": "clients_connected",
}
"""The broker counters the ingest subscribes to (Mosquitto publishes them retained every
``sys_interval``); ``uptime`` is the heartbeat."""


@dataclass(frozen=True)
class ReadinessPolicy:
    """Thresholds of :func:`readiness`."""

    disconnected_grace_s: float = 15.0
    sys_interval_s: float = 10.0
    """The broker's ``sys_interval``; no heartbeat for 3x this is a stall (0: the broker
    publishes no ``$SYS`` tree, do not expect one)."""
    stall_s: float = 30.0
    flap_count: int = 3
    flap_window_s: float = 60.0
    stable_s: float = 10.0
    """After flapping or a lost session, connected this long before ready again."""


@dataclass
class BrokerStats:
    """The last ``$SYS`` values seen (None: not seen yet)."""

    uptime_s: float | None = None
    dropped: int | None = None
    store_bytes: int | None = None
    clients_connected: int | None = None
    heartbeat_at: float | None = None


@dataclass
class ConnectVerdict:
    """What :meth:`IngestStatus.connected` concluded about a new connection."""

    session_lost: bool = False
    displaced: bool = False
    """Flapping confirmed: the id is in use by another client (reported once per episode)."""
    recent_disconnects: int = 0


@dataclass
class IngestStatus:
    """Observations of one ingest worker (written by its threads, read by the API)."""

    started_at: float
    policy: ReadinessPolicy = field(default_factory=ReadinessPolicy)
    broker: BrokerStats = field(default_factory=BrokerStats)
    is_connected: bool = False
    connected_at: float | None = None
    disconnected_at: float | None = None
    session_lost_at: float | None = None
    last_commit_at: float | None = None
    backlog: int = 0
    backlog_since: float | None = None
    _disconnects: deque[float] = field(default_factory=deque)
    _flap_reported: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- connection ------------------------------------------------------------------

    def connected(self, now: float, *, persistent: bool, session_present: bool) -> ConnectVerdict:
        """Record a successful connect. A persistent session that the broker no longer
        has is *lost* (not on the first connect of this process: nothing was stored
        yet); three unexpected disconnects within the flap window, each followed by a
        reconnect like this one, mean another client is using the id."""
        with self._lock:
            verdict = ConnectVerdict()
            first = self.connected_at is None and self.disconnected_at is None
            if persistent and not session_present and not first:
                verdict.session_lost = True
                self.session_lost_at = now
            self._trim(now)
            verdict.recent_disconnects = len(self._disconnects)
            if len(self._disconnects) >= self.policy.flap_count and not self._flap_reported:
                verdict.displaced = True
                self._flap_reported = True
            self.is_connected = True
            self.connected_at = now
            return verdict

    def disconnected(self, now: float, *, expected: bool) -> None:
        """Record a disconnect (``expected``: we asked for it)."""
        with self._lock:
            self.is_connected = False
            self.disconnected_at = now
            if not expected:
                self._disconnects.append(now)
                self._trim(now)

    def _trim(self, now: float) -> None:
        window = self.policy.flap_window_s
        while self._disconnects and now - self._disconnects[0] > window:
            self._disconnects.popleft()
        if not self._disconnects:
            self._flap_reported = False

    # -- progress --------------------------------------------------------------------

    def received(self, now: float) -> None:
        """A message was queued for storage."""
        with self._lock:
            if self.backlog == 0:
                self.backlog_since = now
            self.backlog += 1

    def settled(self, n: int, now: float, *, committed: bool = True) -> None:
        """``n`` queued messages left the queue (committed, or dropped for redelivery)."""
        with self._lock:
            self.backlog = max(0, self.backlog - n)
            if committed:
                self.last_commit_at = now
            if self.backlog == 0:
                self.backlog_since = None

    def heartbeat(self, topic: str, payload: bytes, now: float) -> int:
        """Record one ``$SYS`` value; returns by how much the broker's dropped-messages
        counter rose (the first value counts in full: drops since the broker started)."""
        attr = SYS_TOPICS.get(topic)
        if attr is None:
            return 0
        try:
            value = float(payload.split()[0]) if payload else None
        except ValueError:
            return 0
        if value is None:
            return 0
        with self._lock:
            b = self.broker
            if attr == "uptime_s":
                b.uptime_s = value
                b.heartbeat_at = now
                return 0
            before = b.dropped
            setattr(b, attr, int(value))
            if attr == "dropped":
                return max(0, int(value) - (before or 0))
            return 0

    # -- views -----------------------------------------------------------------------

    def recent_disconnects(self, now: float) -> int:
        """Unexpected disconnects within the flap window."""
        with self._lock:
            self._trim(now)
            return len(self._disconnects)

    def view(self, now: float) -> dict[str, Any]:
        """The ``ingest`` block of ``/healthz``: readiness, reasons and the observations."""
        reasons = readiness(self, now)
        b = self.broker
        return {
            "ready": not reasons,
            "reasons": reasons,
            "connected": self.is_connected,
            "recent_disconnects": self.recent_disconnects(now),
            "last_commit_age_s": _age(self.last_commit_at, now),
            "backlog": self.backlog,
            "broker_heartbeat_age_s": _age(b.heartbeat_at, now),
            "broker_dropped_messages": b.dropped,
        }


def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def readiness(status: IngestStatus, now: float) -> list[str]:
    """Why the ingest is not ready (empty: ready). Not ready when it never connected or
    has been disconnected longer than the grace; when the broker heartbeat is older than
    3 x ``sys_interval``; when messages wait and nothing was committed for ``stall_s``;
    and, until connected ``stable_s`` again, after flapping or a lost session."""
    p = status.policy
    reasons: list[str] = []
    if not status.is_connected:
        if status.connected_at is None:
            reasons.append("not connected to the broker yet")
        elif now - (status.disconnected_at or now) > p.disconnected_grace_s:
            reasons.append(
                f"disconnected from the broker for {now - (status.disconnected_at or now):.0f}s"
            )
    stable = status.is_connected and now - (status.connected_at or now) >= p.stable_s
    flaps = status.recent_disconnects(now)
    if flaps >= p.flap_count and not stable:
        reasons.append(
            f"connection flapping: {flaps} unexpected disconnects in {p.flap_window_s:.0f}s "
            "(another client may be using the ingest's client id)"
        )
    lost = status.session_lost_at
    if lost is not None and not stable and lost >= (status.connected_at or 0.0):
        reasons.append("the broker lost the ingest's persistent session")
    if p.sys_interval_s > 0 and status.is_connected:
        since = max(status.broker.heartbeat_at or 0.0, status.connected_at or now)
        if now - since > 3 * p.sys_interval_s:
            reasons.append(f"no broker heartbeat ($SYS/broker/uptime) for {now - since:.0f}s")
    if status.backlog and status.backlog_since is not None:
        since = max(status.backlog_since, status.last_commit_at or 0.0)
        if now - since > p.stall_s:
            reasons.append(
                f"{status.backlog} messages waiting, nothing committed for {now - since:.0f}s"
            )
    return reasons
