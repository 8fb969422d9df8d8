"""The demo's fleet server: its configuration and command line (``fleet-sim demo``).

SQLite and the embedded MQTT broker in the demo's temporary directory, on free loopback
ports, with short timeouts and job intervals so a rollout settles in seconds.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_free_ports() -> tuple[int, int]:
    """Two distinct free loopback ports (the demo's API and embedded broker)."""
    first, second = free_port(), free_port()
    while second == first:
        second = free_port()
    return first, second


def server_config(tmp: Path, api_port: int, mqtt_port: int) -> str:
    """The demo server's TOML: SQLite, embedded broker, short timeouts and job intervals."""
    return f"""# fleet-server configuration written by fleet-sim demo
# Demo mode: no TLS, an unauthenticated embedded broker. Never expose it (SECURITY.md).
[security]
mode = "demo"

[database]
url = "sqlite:///{tmp / "fleet.db"}"

[mqtt]
embedded_port = {mqtt_port}

[api]
host = "127.0.0.1"
port = {api_port}

[ingest]
auto_register = true

[presence]
sweep_interval_s = 2

[updates]
repo_dir = "{tmp / "tuf"}"
keys_dir = "{tmp / "tuf-keys"}"
expiry_interval_s = 2

[rollouts]
tick_interval_s = 1
"""


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fleet_server.cli import main; main()", *args]


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C (or SIGTERM) until the block ends, then raise ``KeyboardInterrupt``:
    around starting a child and keeping its ``Popen``, so the demo can always stop what it
    started (main thread only, where Python runs signal handlers)."""
    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


def start_process(argv: list[str], log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a child in its own session (the demo stops it), output to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )


__all__ = [
    "free_port",
    "held_interrupts",
    "server_command",
    "server_config",
    "start_process",
    "two_free_ports",
]
