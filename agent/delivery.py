"""Delivery of the outbox over the transport: seq order, a bounded in-flight window, and
messages leave the outbox only once the broker acknowledged them (PUBACK)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.store import Outbox
from agent.transport import Transport

log = logging.getLogger("agent")

WINDOW = 20
"""Messages in flight at most (sent, not yet acknowledged)."""
ACK_TIMEOUT_S = 60.0
"""In flight this long with no PUBACK at all on a live connection: the connection is
stalled and is dropped, so the messages are sent again on a new one. Seen on a NATS
cluster whose stream leader died: the connection stays up, its pending PUBACKs stop coming
(README, Scaling out); MQTT itself re-sends only on a new connection."""


class Delivery:
    """The bookkeeping of the current connection: what was sent, what came back."""

    def __init__(
        self, outbox: Outbox, transport: Transport, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.outbox = outbox
        self.transport = transport
        self.clock = clock
        self._progress_at: float | None = None
        """When the in-flight window last moved (first send, or a PUBACK)."""
        self.cursor = -1
        self.inflight: dict[int, int | None] = {}
        """MQTT message id -> outbox seq (None for a direct message)."""
        self._acked: list[int] = []

    def reset(self) -> None:
        """A connection came up or went down: unacknowledged messages are sent again."""
        self.cursor = -1
        self.inflight = {}
        self._progress_at = None

    def stalled(self, limit: float = ACK_TIMEOUT_S) -> bool:
        """True when messages are in flight and no PUBACK came for ``limit`` seconds."""
        at = self._progress_at
        return bool(self.inflight) and at is not None and self.clock() - at > limit

    def _sent(self, mid: int, seq: int | None) -> None:
        if not self.inflight:
            self._progress_at = self.clock()
        self.inflight[mid] = seq

    def send_direct(self, topic_name: str, payload: bytes, retain: bool) -> None:
        """Publish a message that does not go through the outbox (presence)."""
        mid = self.transport.publish(topic_name, payload, retain=retain)
        if mid is not None:
            self._sent(mid, None)

    def on_published(self, mid: int, ok: bool) -> None:
        """The broker acknowledged (or refused) message ``mid``."""
        if mid not in self.inflight:
            return
        self._progress_at = self.clock()
        seq = self.inflight.pop(mid)
        if seq is None:
            return
        if not ok:
            log.error("broker refused message seq %d; dropping it", seq)
        self._acked.append(seq)

    def pump(self) -> None:
        """Send queued messages in seq order, keeping at most the in-flight window open."""
        if not self.transport.connected:
            return
        window = WINDOW - len(self.inflight)
        while window > 0:
            rows = self.outbox.after(self.cursor, window)
            if not rows:
                return
            for q in rows:
                mid = self.transport.publish(q.topic, q.payload)
                if mid is None:
                    return
                self._sent(mid, q.seq)
                self.cursor = q.seq
                window -= 1

    def commit_acks(self) -> None:
        """Remove the acknowledged messages from the outbox (in the loop's thread)."""
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.ack(acked)

    @property
    def settled(self) -> bool:
        """True when nothing is queued and nothing is in flight."""
        return self.outbox.depth() == 0 and not self.inflight
