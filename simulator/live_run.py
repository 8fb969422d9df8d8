"""``fleet-sim run`` in live mode: a real evaluation against a broker and a fleet server.

What this adds around :class:`~simulator.live.LiveEngine`:

* updates: with a server, every device gets the agent's update driver
  (:class:`~simulator.update_backends.DeviceUpdates`) over the real TUF client against the
  server's ``/tuf/`` repository, so rollouts install on simulated devices;
* loud connection trouble: the reason nothing connects ("cannot reach ...", "broker
  refused MQTT 5 ...; retrying with MQTT 3.1.1") is printed as it happens, and
  :func:`exit_status` is non-zero when no device ever connected;
* progress and a summary that also reach a log file: on a terminal a live table, on a
  pipe one plain line every ``log_interval_s``.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from simulator.device import SimDevice
from simulator.engine import FleetSnapshot
from simulator.live import LiveEngine, LiveStats

NO_CONNECTION_WARN_S = 10.0
"""Seconds without any connected device before the run says so (then every 10 s)."""


def fetch_tuf_root(server_url: str, timeout: float = 10.0) -> bytes:
    """The server's first trusted root (``/tuf/metadata/1.root.json``).

    Trust on first use: good enough for a simulator pointed at a server its user runs;
    ``--tuf-root FILE`` pins a root instead. Raises ``OSError`` when it cannot be read."""
    url = server_url.rstrip("/") + "/tuf/metadata/1.root.json"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.URLError as exc:
        raise OSError(f"cannot read {url}: {exc.reason}") from None


def attach_updates(
    devices: Sequence[SimDevice], server_url: str, root: bytes, workdir: Path
) -> int:
    """Give every device the agent's update driver over the real TUF client against
    ``server_url``; returns how many devices take updates."""
    from simulator.update_backends import DeviceUpdates, TufTargets

    source = TufTargets(server_url, root, workdir)
    for device in devices:
        DeviceUpdates(
            source, hardware_revision=device.spec.hardware_revision, model=device.spec.model
        ).attach(device)
    return len(devices)


class Reporter:
    """Progress of a live run: a table on a terminal, plain lines on a pipe; loud notices
    (protocol fallback, nothing connecting) either way."""

    def __init__(
        self,
        console: Console,
        table: Callable[[FleetSnapshot, dict[str, object]], Any],
        *,
        quiet_table: bool,
        log_interval_s: float = 10.0,
    ) -> None:
        self.console = console
        self.table = table
        self.tty = console.is_terminal
        self.quiet_table = quiet_table
        self.log_interval_s = log_interval_s
        self.started = time.monotonic()
        self._next_line = self.started
        self._next_warn = self.started + NO_CONNECTION_WARN_S
        self._notices_seen = 0
        self._live: Live | None = None

    def __enter__(self) -> Reporter:
        if self.tty:
            self._live = Live(
                console=self.console, transient=self.quiet_table, refresh_per_second=4
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def say(self, message: str) -> None:
        """One loud line (above the live table on a terminal)."""
        self.console.print(f"[yellow]fleet-sim:[/yellow] {message}", markup=True, highlight=False)

    def __call__(self, snap: FleetSnapshot, stats: LiveStats) -> None:
        """The engine's progress callback."""
        now = time.monotonic()
        for notice in stats.notices[self._notices_seen :]:
            self.say(notice)
        self._notices_seen = len(stats.notices)
        if stats.connects == 0 and now >= self._next_warn:
            reason = stats.last_failure or "no answer yet"
            self.say(f"no device connected after {now - self.started:.0f} s: {reason}")
            self._next_warn = now + 10.0
        extra: dict[str, object] = {
            "connects / failures": f"{stats.connects} / {stats.connect_failures}",
            "protocol": stats.protocol,
        }
        if self._live is not None:
            self._live.update(self.table(snap, extra))
        elif now >= self._next_line:
            self._next_line = now + self.log_interval_s
            self.console.print(
                f"t+{now - self.started:.0f}s online {snap.online}/{snap.devices} "
                f"messages {snap.messages} connects {stats.connects} "
                f"failures {stats.connect_failures} ({stats.protocol})",
                markup=False,
                highlight=False,
            )


def run_engine(engine: LiveEngine, until: float, reporter: Reporter) -> FleetSnapshot:
    """Run the engine to ``until`` with ``reporter`` showing progress."""
    with reporter:
        return asyncio.run(engine.run(until, progress=reporter))


def live_summary(engine: LiveEngine, final: FleetSnapshot, updates: int) -> dict[str, object]:
    """The connection and update part of a live run's summary."""
    stats = engine.stats
    summary: dict[str, object] = {
        **final.as_dict(),
        "protocol": stats.protocol,
        "connects": stats.connects,
        "connect_failures": stats.connect_failures,
        "commands": stats.commands,
        "device_errors": stats.device_errors,
        "devices_taking_updates": updates,
    }
    if stats.notices:
        summary["notices"] = list(stats.notices)
    if stats.connects == 0:
        summary["error"] = f"no device ever connected: {stats.last_failure or 'no answer'}"
    return summary


def exit_status(engine: LiveEngine) -> int:
    """1 when no device ever connected (the run measured nothing), else 0."""
    return 0 if engine.stats.connects > 0 else 1


def updates_workdir() -> tempfile.TemporaryDirectory[str]:
    """Where the shared TUF client keeps its metadata and downloads for one run."""
    return tempfile.TemporaryDirectory(prefix="fleet-sim-tuf-")


__all__ = [
    "Reporter",
    "attach_updates",
    "exit_status",
    "fetch_tuf_root",
    "live_summary",
    "run_engine",
    "updates_workdir",
]
