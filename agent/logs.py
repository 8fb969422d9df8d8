"""Logging that fits journald, plus a bounded in-memory ring of recent lines.

Under systemd (``$JOURNAL_STREAM`` set) lines carry a ``<N>`` syslog priority prefix and
no timestamp (journald adds its own); on a terminal they get a timestamp. The ring keeps
the last lines for diagnostics bundles without ever growing.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald reads the priority prefix."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record for journald."""
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


class RingHandler(logging.Handler):
    """Keeps the last ``capacity`` formatted lines in memory."""

    def __init__(self, capacity: int = 2000) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Store one line (never raises)."""
        try:
            self.lines.append(self.format(record))
        except Exception:  # a logging handler must never break the caller
            self.handleError(record)


def setup_logging(level: str = "info", ring_capacity: int = 2000) -> RingHandler:
    """Configure the root logger for the agent and return the ring handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        stream.setFormatter(JournalFormatter("%(message)s"))
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ring = RingHandler(ring_capacity)
    root.addHandler(stream)
    root.addHandler(ring)
    root.setLevel(level.upper())
    return ring
