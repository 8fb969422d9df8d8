"""Shared test harness: real Mosquitto and real PostgreSQL, started or reached per test.

* ``mosquitto_factory(config)`` starts a private ``mosquitto`` on a free loopback port
  with the configuration the test chooses (TLS, ACLs, persistence...), and stops it after
  the test. ``mosquitto`` is the plain, anonymous, loopback-only broker, with the same
  durability block as production (persistence in its own directory, byte-bounded
  queues; autosave and ``$SYS`` every second), so a restart keeps sessions as a
  production broker does.
* ``postgres_url`` is a fresh, empty PostgreSQL database for one test, created on the
  server named by ``FLEET_TEST_DATABASE_URL`` and dropped afterwards.

Both skip with a clear reason when the service is missing, and fail instead when
``FLEET_REQUIRE_REAL_SERVICES=1`` (CI sets it, so CI always exercises the real services).
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from fleet_server.identity.mosquitto_config import render_durability

if TYPE_CHECKING:
    from tests.support.mtls_fleet import MtlsFleet

# Timing-based health checks would make property tests flaky on a loaded 2-core CI box.
settings.register_profile("edgefleet", deadline=None)
settings.load_profile("edgefleet")

REQUIRE_REAL = os.environ.get("FLEET_REQUIRE_REAL_SERVICES") == "1"


# Files whose tests run for many seconds each (real processes, real-time waits). They are
# collected first so pytest-xdist starts them while the short tests fill the other workers,
# instead of one of them starting last and holding the whole run up.
_LONG_FIRST = (
    "tests/e2e/",
    "tests/fault/",
    "tests/integration/test_rollouts_sim.py",
    "tests/integration/test_presence_and_clocks.py",
    "tests/integration/test_presence_agent_process.py",
    "tests/integration/test_sim_bench_device.py",
    "tests/integration/test_sim_live.py",
    "tests/integration/server/test_run_embedded.py",
    "tests/security/test_production_mode.py",
    "tests/security/test_production_run.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the long tests first (a stable sort: order within each group is kept)."""
    root = config.rootpath

    def long_first(item: pytest.Item) -> int:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        slow = item.get_closest_marker("slow") is not None
        return 0 if slow or path.startswith(_LONG_FIRST) else 1

    items.sort(key=long_first)


def need_service(reason: str) -> None:
    """Skip the test because a real service is missing, or fail when CI requires it."""
    if REQUIRE_REAL:
        pytest.fail(f"{reason} (FLEET_REQUIRE_REAL_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_PORT_DRAW = random.Random()  # its own state: a test seeding the global one cannot repeat ports
_HANDED_OUT: set[int] = set()
"""Ports :func:`restartable_port` gave this process (a cluster takes nine before any
node binds one, so a free-looking port may already be promised)."""


def restartable_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range, for a server a
    test kills and starts again on the same port. A port from :func:`free_port` lies in
    that range, where any outgoing connection on the machine may take it as its local
    port while the server is down (a full run lost a restarted nats-server's port so).
    Each xdist worker draws from its own slice of 20000-32767, so two workers never
    pick the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    slot = int(worker[2:]) if worker[2:].isdigit() else 0
    size = 12768 // 8
    low = 20000 + (slot % 8) * size
    for _ in range(200):
        port = _PORT_DRAW.randrange(low, low + size)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    return free_port()


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> object:
    """Poll ``predicate`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f}s")
        time.sleep(interval)


# --- Mosquitto -------------------------------------------------------------------------


def mosquitto_binary() -> str | None:
    """Path of the ``mosquitto`` broker binary (PATH first, then the Debian location)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


RUN_AS_ME = f"user {getpass.getuser()}\n"
"""Run as root, Mosquitto drops to ``mosquitto`` and could not save into the test's
directory; every harness config that persists needs this line."""

DEFAULT_MOSQUITTO_CONFIG = (
    RUN_AS_ME
    + render_durability(persistence_dir="{workdir}", autosave_interval_s=1, sys_interval_s=1)
    + """\
listener {port} 127.0.0.1
allow_anonymous true
"""
)


class MosquittoBroker:
    """A private Mosquitto process on a loopback port; can be stopped and restarted on
    the same port to simulate a broker outage."""

    def __init__(self, binary: str, workdir: Path, config: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = restartable_port()  # restart() binds it again
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        body = config.format(port=self.port, workdir=workdir)
        _check_persistence_inside(body, workdir)
        self.config_path.write_text(
            f"{body}\nlog_dest file {self.log_path}\nlog_type error\nlog_type warning\n"
            f"log_type notice\nlog_type information\nlog_type subscribe\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` for clients and the server's ``FLEET_MQTT_URL``."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited at start: {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL if it lingers)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """The broker's log so far (useful in assertion messages)."""
        return self.log_path.read_text() if self.log_path.exists() else ""


def _check_persistence_inside(config: str, workdir: Path) -> None:
    """Refuse a test broker that would save outside its own directory (for instance
    the production default ``/var/lib/mosquitto``, the system broker's)."""
    for line in config.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "persistence_location" and not Path(value.strip()).is_relative_to(workdir):
            raise ValueError(
                f"test broker would persist to {value.strip()}: pass "
                "persistence_dir='{workdir}' to BrokerSettings / render_durability"
            )


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start private brokers with a test-chosen config (``{port}``/``{workdir}`` are
    substituted); all are stopped when the test ends."""
    binary = mosquitto_binary()
    if binary is None:
        need_service("the mosquitto binary is not installed (apt-get install mosquitto)")
    brokers: list[MosquittoBroker] = []

    def start(config: str = DEFAULT_MOSQUITTO_CONFIG, *, name: str = "broker") -> MosquittoBroker:
        workdir = tmp_path / f"mosquitto-{name}-{len(brokers)}"
        workdir.mkdir()
        broker = MosquittoBroker(binary, workdir, config)  # type: ignore[arg-type]
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


@pytest.fixture
def mtls_fleet(
    mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path
) -> Iterator[Callable[..., MtlsFleet]]:
    """Factory of production-shaped fleets (fleet CA, the generated mutual-TLS broker
    configuration, a database): keyword overrides as
    :func:`tests.support.mtls_fleet.build_mtls_fleet`; all stopped when the test ends."""
    from tests.support.mtls_fleet import build_mtls_fleet

    fleets: list[MtlsFleet] = []

    def make(**overrides: Any) -> MtlsFleet:
        directory = tmp_path / f"fleet-{len(fleets)}"
        directory.mkdir()
        fleets.append(build_mtls_fleet(mosquitto_factory, directory, **overrides))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.close()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A plain anonymous Mosquitto on a free loopback port."""
    return mosquitto_factory()


# --- PostgreSQL ------------------------------------------------------------------------

_RUN_ID = uuid.uuid4().hex[:8]


def _libpq_url(url: str) -> str:
    """Strip a SQLAlchemy driver suffix so psycopg can use the URL directly."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _with_database(url: str, database: str) -> str:
    base, _, _ = _libpq_url(url).rpartition("/")
    query = ""
    if "?" in url:
        query = "?" + url.split("?", 1)[1]
    return f"{base}/{database}{query}"


@pytest.fixture(scope="session")
def _postgres_admin() -> Iterator[str]:
    """libpq URL of the PostgreSQL server that test databases are created on."""
    url = os.environ.get("FLEET_TEST_DATABASE_URL")
    if not url:
        need_service("FLEET_TEST_DATABASE_URL is not set, so PostgreSQL tests cannot run")
    try:
        import psycopg
    except ImportError:
        need_service("psycopg is not installed (pip install -e '.[server]')")
    admin = _libpq_url(url)  # type: ignore[arg-type]
    try:
        with psycopg.connect(admin, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        need_service(f"PostgreSQL at FLEET_TEST_DATABASE_URL is unreachable: {exc}")
    yield admin
    # Drop anything this run left behind (a test that crashed before its teardown).
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (f"edgefleet_test_{_RUN_ID}_%",),
        ).fetchall()
        for (name,) in rows:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(_postgres_admin: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, as a SQLAlchemy URL
    (``postgresql+psycopg://...``); dropped when the test ends."""
    import psycopg

    name = f"edgefleet_test_{_RUN_ID}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_postgres_admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    libpq = _with_database(_postgres_admin, name)
    yield "postgresql+psycopg://" + libpq[len("postgresql://") :]
    with psycopg.connect(_postgres_admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
