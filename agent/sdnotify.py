"""systemd notification (``Type=notify``): READY, STOPPING, STATUS and watchdog pings.

Implemented on the stdlib: one datagram to ``$NOTIFY_SOCKET``. Outside systemd (no
socket) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends ``sd_notify`` messages when running under systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2  # ping at half the timeout
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when systemd gave us a notification socket."""
        return self.address is not None

    def notify(self, message: str) -> None:
        """Send one notification (e.g. ``READY=1``); errors are ignored (never fatal)."""
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        """Tell systemd that start-up finished."""
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        """A one-line status shown by ``systemctl status``."""
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        """Keep-alive ping for ``WatchdogSec``."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Tell systemd that shutdown began."""
        self.notify("STOPPING=1")
