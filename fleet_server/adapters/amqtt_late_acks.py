"""amqtt's "no PUBACK within 5 s" records, counted and summarised in one line.

amqtt 0.12 (the embedded broker) waits a fixed 5 s for a subscriber's PUBACK of a QoS 1
delivery. Then it forgets the message: the PUBLISH was written to the subscriber's
socket, amqtt never sends it again, and a PUBACK that comes later is "for an unknown
pending message". Each such delivery logged a warning, an ERROR with a traceback (from the
broadcast loop, or from asyncio for a retained message) and a warning for the late
PUBACK. The ingest acknowledges only what the database committed, so a backlog of more
than 5 s (300 devices reconnecting on a loaded machine) filled the server log with
tracebacks that read like a crash.

:class:`LateAcks` drops exactly those records: it counts each timeout (with its
subscriber) from the handler's warning, drops the tracebacks of the same timeouts, and
drops a late PUBACK only for a packet id that timed out for that client. A summary line
says how many deliveries went unacknowledged and by which subscribers, at most once
every :data:`LATE_ACK_REPORT_S` seconds (a held-back summary is flushed when the interval
ends) and when the broker stops. Every other record passes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fleet_server.adapters.embedded_broker")

LATE_ACK_REPORT_S = 60.0
"""How often, at most, the summary of late acknowledgements is logged."""

HANDLER_LOGGER = "amqtt.mqtt.protocol.handler"
LOGGERS = ("amqtt.broker", HANDLER_LOGGER, "asyncio")
"""The loggers the filter sits on: the handler's warnings, the broadcast loop's
traceback, asyncio's "Task exception was never retrieved" (retained messages)."""

_TIMEOUT = "Timeout waiting for PUBACK for packet ID "
_UNKNOWN = "Received PUBACK for unknown pending message Id: '"
_REMEMBERED = 10_000
"""Timed-out (client, packet id) pairs kept to recognise their late PUBACKs."""

Schedule = Callable[[float, Callable[[], None]], Any]


def _timer(delay: float, callback: Callable[[], None]) -> None:
    timer = threading.Timer(delay, callback)
    timer.daemon = True
    timer.start()


class LateAcks(logging.Filter):
    """The filter; one per process (:data:`LATE_ACKS`), the amqtt loggers being global."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, later: Schedule = _timer):
        super().__init__()
        self.count = 0
        """Deliveries amqtt stopped waiting for since the process started."""
        self._clock = clock
        self._later = later
        self._lock = threading.Lock()
        self._unreported = 0
        self._clients: set[str] = set()
        self._late: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._last_report: float | None = None
        self._flush_pending = False

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for amqtt's late-PUBACK records; every other record passes."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            # The traceback of a timeout already counted from the handler's warning.
            return not (isinstance(exc, TimeoutError) and str(exc).startswith(_TIMEOUT))
        if record.name != HANDLER_LOGGER:
            return True
        text = str(record.msg)
        client = str(getattr(record, "client_id", "?"))
        if text.startswith(_TIMEOUT):
            self._timed_out(client, text[len(_TIMEOUT) :])
            return False
        if text.startswith(_UNKNOWN):
            return not self._forget(client, text[len(_UNKNOWN) :].rstrip("'"))
        return True

    def _timed_out(self, client: str, packet_id: str) -> None:
        with self._lock:
            self.count += 1
            self._unreported += 1
            self._clients.add(client)
            self._late[(client, packet_id)] = None
            if len(self._late) > _REMEMBERED:
                self._late.popitem(last=False)
        self.report(force=False)

    def _forget(self, client: str, packet_id: str) -> bool:
        """True if ``packet_id`` timed out for ``client`` (its PUBACK is a late one)."""
        with self._lock:
            return self._late.pop((client, packet_id), False) is None

    def report(self, force: bool = True) -> None:
        """Log the timeouts not reported yet; unless ``force`` (the broker stopping), at
        most once per interval, a held-back summary being flushed when it ends."""
        with self._lock:
            now = self._clock()
            wait = 0.0
            if self._last_report is not None:
                wait = self._last_report + LATE_ACK_REPORT_S - now
            if not self._unreported:
                return
            if wait > 0 and not force:
                if not self._flush_pending:
                    self._flush_pending = True
                    self._later(wait, self._flush)
                return
            late, clients = self._unreported, sorted(self._clients)
            self._unreported, self._clients, self._last_report = 0, set(), now
            total = self.count
        log.warning(
            "embedded broker: %d QoS 1 deliveries had no PUBACK within amqtt's fixed 5 s "
            "(%d since start; subscribers: %s): amqtt wrote them to the subscriber and will "
            "not send them again, and ignores their late acknowledgements. A slow "
            "subscriber (a busy ingest or device) causes it; use Mosquitto "
            "(FLEET_MQTT_URL) under load",
            late,
            total,
            ", ".join(clients),
        )

    def _flush(self) -> None:
        with self._lock:
            self._flush_pending = False
        self.report(force=False)


LATE_ACKS = LateAcks()


def install() -> None:
    """Put :data:`LATE_ACKS` on the amqtt and asyncio loggers (once)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if LATE_ACKS not in logger.filters:
            logger.addFilter(LATE_ACKS)
