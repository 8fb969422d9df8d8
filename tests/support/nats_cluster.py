"""Private nats-server processes on loopback: one node or a cluster of N with routes,
JetStream (store in the test's directory) and an MQTT listener on every node.

Never the system server on 4222: every port here is a free one. :func:`nats_binary` finds
the Debian binary; a test needing it and not finding it skips (fails under
``FLEET_REQUIRE_REAL_SERVICES=1``) through :func:`tests.conftest.need_service`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import restartable_port


def nats_binary() -> str | None:
    """Path of ``nats-server`` (PATH first, then the Debian location)."""
    found = shutil.which("nats-server")
    if found:
        return found
    for candidate in ("/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class NatsNode:
    """One nats-server process; :meth:`kill` is ``kill -9``, :meth:`start` brings it back
    on the same ports and store."""

    binary: str
    name: str
    workdir: Path
    client_port: int = field(default_factory=restartable_port)
    cluster_port: int = field(default_factory=restartable_port)
    mqtt_port: int = field(default_factory=restartable_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        """``nats://`` URL of the client listener."""
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        """``mqtt://`` URL of the MQTT listener."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def write_config(self, routes: list[int], extra: str = "") -> None:
        """The node's configuration: JetStream, MQTT, and routes to ``routes`` (if any)."""
        store = self.workdir / "store"
        store.mkdir(parents=True, exist_ok=True)
        cluster = ""
        if routes:
            urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
            cluster = (
                f"cluster {{ name: fleet, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{urls}] }}\n"
            )
        (self.workdir / "nats.conf").write_text(
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{store}" }}\n'
            f"{cluster}"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port} }}\n"
            f"{extra}"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and wait until both listeners accept connections."""
        if self.running:
            return
        log = open(self.workdir / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.workdir / "nats.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not (_accepts(self.client_port) and _accepts(self.mqtt_port)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.name} did not start: {self.log_tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9`` the node (no clean shutdown, no will published by it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the node cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, n: int = 2000) -> str:
        """The end of the node's log (for failure messages)."""
        path = self.workdir / "nats.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


@dataclass
class NatsCluster:
    """N nodes routed to each other (N=1: a single server, no cluster block)."""

    nodes: list[NatsNode]

    @classmethod
    def create(cls, binary: str, workdir: Path, size: int = 3, extra: str = "") -> NatsCluster:
        """Write the configurations of ``size`` nodes under ``workdir`` (not started)."""
        nodes = [NatsNode(binary, f"n{i + 1}", workdir / f"n{i + 1}") for i in range(size)]
        routes = [n.cluster_port for n in nodes] if size > 1 else []
        for node in nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.write_config(routes, extra)
        return cls(nodes)

    @property
    def nats_urls(self) -> list[str]:
        """Every node's ``nats://`` URL."""
        return [n.nats_url for n in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        """Every node's ``mqtt://`` URL."""
        return [n.mqtt_url for n in self.nodes]

    def start(self) -> None:
        """Start every node (not yet running)."""
        for node in self.nodes:
            if node.proc is None or not node.running:
                node.proc = None
                node.start()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
