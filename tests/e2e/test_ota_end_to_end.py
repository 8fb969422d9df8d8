"""OTA end to end (issue 5): a real fleet server, a real Mosquitto and a real
``fleet-agent run`` process with directory slots, the test playing systemd.

The server (the real app under uvicorn on loopback) publishes bundles through
``POST /api/v1/bundles`` into its TUF repository, serves that repository at ``/tuf/`` and
sends ``Install`` over MQTT; the real ingest worker writes the agent's reports into the
database. The agent trusts the repository's ``root.json``, downloads from the server's
``/tuf/`` URLs, writes its inactive slot and exits 75 to be restarted into it; the
``Systemd`` helper restarts it whenever it exits (75, the simulated crash 70, a SIGKILL),
as ``Restart=always`` would. Everything is observed through the API and the slots on disk:

1. a good release commits, the registry shows the new version, the slot switched
   (SQLite and PostgreSQL);
2. ``health-fail`` and ``boot-crash`` roll back (failure class ``health`` / ``boot``), the
   registry shows the old version again, and asking again for either version fails at once:
   the agent refuses the ``Install`` of a quarantined version;
3. a tampered target fails as ``security`` / ``tampered_target``, slots untouched;
4. ``wrong-hardware`` is refused by the API (``incompatible``) for a rev-a device, and by
   the agent itself (``wrong_hardware``) when the registry wrongly claims rev-z;
5. an agent SIGKILLed in the middle of an update still leaves one history entry per state.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from agent.updater import EXIT_RESTART, EXIT_SIMULATED_CRASH, PAUSE_ENV
from firmware_bundles.build import BuiltBundle
from firmware_bundles.examples import build_examples
from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker, wait_connected
from fleet_server.adapters.mqtt_publisher import PahoPublisher
from fleet_server.api import create_app
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.migrations import upgrade_to_head
from fleet_server.services.audit import SYSTEM
from fleet_server.services.ingest import BatchWriter
from fleet_server.services.metrics import IngestMetrics
from fleet_server.services.registry import create_device
from fleet_server.updates.keys import create_root_keys
from fleet_server.updates.tuf_repository import TufRepository, root_bytes
from tests.conftest import MosquittoBroker, wait_for
from tests.server_fixtures import LiveServer, make_tokens, serve, settings_for
from tests.support.agent_process import fleet_agent, write_config
from tests.support.tuf_attacks import tamper_target
from tests.support.update_device import (
    INITIAL_VERSION,
    committed_version,
    running_version,
    slots_on_disk,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]

DEVICE = "pi-e2e-1"
FINAL = {"committed", "failed", "cancelled"}
WALK_OK = [
    "sent",
    "downloading",
    "verified",
    "installing",
    "installed",
    "rebooting",
    "trial",
    "committed",
]


# -- the test plays systemd ----------------------------------------------------------------


@dataclass
class Systemd:
    """Runs ``fleet-agent run`` and restarts it whenever it exits, like ``Restart=always``
    (75: restart into the new slot, 70: simulated crash, -9: killed by the test), at most
    ``max_starts`` times. With ``pause_in`` the runs until the first kill block in that state
    (the updater's test hook) so the test can SIGKILL it there with ``kill_paused``."""

    config: Path
    log_dir: Path
    state_dir: Path
    pause_in: str | None = None
    max_starts: int = 12
    exits: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                log = (self.log_dir / f"agent-{len(self.exits)}.log").open("wb")
                env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
                if self.pause_in and -signal.SIGKILL not in self.exits:
                    env[PAUSE_ENV] = self.pause_in
                self.proc = subprocess.Popen(
                    [fleet_agent(), "run", "-c", str(self.config)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                log.close()
            code = self.proc.wait()
            self.exits.append(code)
            if len(self.exits) >= self.max_starts:
                return

    def kill_paused(self, timeout: float = 30) -> None:
        """Wait until the agent is paused in ``pause_in``, then SIGKILL it."""
        marker = self.state_dir / f"test-paused-{self.pause_in}"
        wait_for(marker.exists, timeout=timeout)
        with self._lock:
            assert self.proc is not None
            assert int(marker.read_text()) == self.proc.pid
            self.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: -signal.SIGKILL in self.exits, timeout=10)

    def logs(self) -> str:
        """Every run's output, for failure messages."""
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("agent-*.log")))

    def stop(self) -> None:
        """Stop for good: SIGTERM (then SIGKILL) and no restart."""
        with self._lock:
            self._stopping = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._thread.join(timeout=20)


# -- the server, the broker, the device -----------------------------------------------------


@dataclass
class Fleet:
    """The running server, its database and TUF repository, and one real agent."""

    tmp: Path
    live: LiveServer
    sessions: sessionmaker[Session]
    tokens: dict[str, str]
    repo_dir: Path
    bundles: dict[str, BuiltBundle]
    broker: MosquittoBroker
    slots_dir: Path
    agent: Systemd | None = None

    # API helpers --------------------------------------------------------------------------

    def hdr(self, role: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def get(self, path: str, role: str = "viewer") -> Any:
        r = httpx.get(f"{self.live.url}{path}", headers=self.hdr(role), timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def publish(self, example: str) -> str:
        """``POST /api/v1/bundles`` with the raw bundle; returns the target name."""
        r = httpx.post(
            f"{self.live.url}/api/v1/bundles",
            content=self.bundles[example].path.read_bytes(),
            headers={**self.hdr(), "Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["name"])

    def update(self, device_id: str, bundle: str) -> httpx.Response:
        return httpx.post(
            f"{self.live.url}/api/v1/devices/{device_id}/update",
            json={"bundle": bundle},
            headers=self.hdr(),
            timeout=10,
        )

    def execution(self, execution_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/v1/executions/{execution_id}"))

    def device(self, device_id: str = DEVICE) -> dict[str, Any]:
        return dict(self.get(f"/api/v1/devices/{device_id}"))

    def finished(self, execution_id: str, timeout: float = 45) -> dict[str, Any]:
        """Wait until the execution reaches a final status; return it."""

        def done() -> dict[str, Any] | None:
            ex = self.execution(execution_id)
            return ex if ex["status"] in FINAL else None

        try:
            found = wait_for(done, timeout=timeout, interval=0.1)
        except TimeoutError:
            logs = self.agent.logs()[-4000:] if self.agent else ""
            raise AssertionError(
                f"execution {execution_id} did not finish: {self.execution(execution_id)}\n{logs}"
            ) from None
        return dict(found)

    # the device ---------------------------------------------------------------------------

    def register(self, device_id: str, hw: str) -> None:
        """Register a device in the server's registry, claiming hardware revision ``hw``."""
        with self.sessions() as s:
            create_device(
                s,
                {"device_id": device_id, "model": "gw-100", "hw_revision": hw},
                actor=SYSTEM,
                now=1_790_000_000.0,
            )
            s.commit()

    def agent_config(self, **updates: Any) -> Path:
        """``device/agent.toml`` for ``DEVICE`` trusting the repository's current root,
        with these ``[updates]`` keys over the test defaults."""
        device = self.tmp / "device"
        root = device / "root.json"
        root.write_bytes(root_bytes(self.repo_dir))
        top = {
            "device_id": DEVICE,
            "broker": self.broker.url,
            "state_dir": str(device / "state"),
            "sample_interval_s": 0.05,
            "publish_interval_s": 0.25,
            "keepalive": 5,
        }
        table = {
            "enabled": True,
            "server_url": self.live.url,
            "root_path": str(root),
            "hardware_revision": "rev-a",
            "model": "gw-100",
            "initial_version": INITIAL_VERSION,
            "simulate_outcomes": True,
            "health_timeout_s": 20,
            "retry_backoff_s": 0.05,
            "download_retries": 2,
            "max_attempts": 2,
            **updates,
        }
        return write_config(device / "agent.toml", top, table)

    def start_agent(self, hardware_revision: str = "rev-a", pause_in: str | None = None) -> Systemd:
        """Start ``fleet-agent run`` for ``DEVICE`` (really ``hardware_revision``) with
        directory slots, trusting the repository's current root; wait for its Boot."""
        device = self.tmp / "device"
        logs = device / "logs"
        logs.mkdir(parents=True)
        config = self.agent_config(
            slots="directory",
            slots_dir=str(self.slots_dir),
            hardware_revision=hardware_revision,
            restart="exit",
            payload_mount="/opt/demo",
        )
        self.agent = Systemd(config, logs, device / "state", pause_in=pause_in)
        # The Boot event (after the command subscription) records the running version.
        try:
            wait_for(lambda: self.device()["software_version"] == INITIAL_VERSION, timeout=30)
        except TimeoutError:
            raise AssertionError(f"agent did not come up:\n{self.agent.logs()[-4000:]}") from None
        return self.agent


@pytest.fixture(scope="module")
def built_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltBundle]:
    out = tmp_path_factory.mktemp("bundles")
    return build_examples(out, ("good-1.2.0", "health-fail", "boot-crash", "wrong-hardware"))


def _fleet(
    db_url: str, tmp: Path, broker: MosquittoBroker, bundles: dict[str, BuiltBundle]
) -> Iterator[Fleet]:
    root_keys = create_root_keys(tmp / "offline-root", count=3, threshold=2)
    repo_dir, keys_dir = tmp / "tuf", tmp / "tuf-keys"
    TufRepository.create(repo_dir, keys_dir, list(root_keys.signers.values())[:2], threshold=2)
    engine = create_db_engine(db_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    settings = settings_for(db_url, updates={"repo_dir": str(repo_dir), "keys_dir": str(keys_dir)})
    publisher = PahoPublisher(broker.host, broker.port)
    assert publisher.wait_connected(10)
    worker = IngestWorker(
        BatchWriter(sessions, metrics=IngestMetrics()),
        IngestOptions(broker.host, broker.port, client_id="ingest-e2e"),
    )
    worker.connect(timeout=10)
    assert wait_connected(worker, 10)
    ingest = threading.Thread(target=worker.run, daemon=True)
    ingest.start()
    live = serve(create_app(settings, sessions=sessions, publisher=publisher))
    fleet = Fleet(
        tmp, live, sessions, make_tokens(sessions), repo_dir, bundles, broker, tmp / "slots"
    )
    fleet.register(DEVICE, "rev-a")
    try:
        yield fleet
    finally:
        if fleet.agent is not None:
            fleet.agent.stop()
        live.stop()
        worker.stop()
        ingest.join(timeout=10)
        publisher.close()
        engine.dispose()


@pytest.fixture
def fleet(
    tmp_path: Path, mosquitto: MosquittoBroker, built_bundles: dict[str, BuiltBundle]
) -> Iterator[Fleet]:
    """Server + ingest + broker on SQLite, the device registered (rev-a), no agent yet."""
    yield from _fleet(f"sqlite:///{tmp_path}/fleet.db", tmp_path, mosquitto, built_bundles)


@pytest.fixture
def pg_fleet(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    built_bundles: dict[str, BuiltBundle],
    postgres_url: str,
) -> Iterator[Fleet]:
    """The same on a fresh PostgreSQL database."""
    yield from _fleet(str(postgres_url), tmp_path, mosquitto, built_bundles)


def states(execution: dict[str, Any]) -> list[str]:
    """The execution's recorded history, state by state."""
    return [e["state"] for e in execution["events"]]


# -- 1. a good update -------------------------------------------------------------------------


def _good_update_commits(fleet: Fleet) -> None:
    agent = fleet.start_agent()
    name = fleet.publish("good-1.2.0")
    r = fleet.update(DEVICE, name)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "sent"
    ex = fleet.finished(r.json()["id"])
    assert ex["status"] == "committed", ex
    # Each reported state once, in order, across the restart into the new slot.
    assert states(ex) == WALK_OK
    assert ex["failure_class"] is None
    wait_for(lambda: fleet.device()["software_version"] == "1.2.0", timeout=15)
    assert running_version(fleet.slots_dir) == "1.2.0"
    # The agent reports the commit, then points ``committed`` at the slot as it finishes
    # (a kill in between finishes it at the next start): poll for it.
    wait_for(lambda: committed_version(fleet.slots_dir) == "1.2.0", timeout=15)
    assert os.readlink(fleet.slots_dir / "current") == "slot-b"
    assert EXIT_RESTART in agent.exits, "the agent restarted into the new slot"


def test_good_update_commits_and_switches_the_slot(fleet: Fleet) -> None:
    _good_update_commits(fleet)


@pytest.mark.postgres
def test_good_update_commits_on_postgresql(pg_fleet: Fleet) -> None:
    _good_update_commits(pg_fleet)


# -- 2. bad releases roll back -----------------------------------------------------------------


def _fleetctl(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env.update(FLEET_URL=fleet.live.url, FLEET_TOKEN=fleet.tokens["operator"], HOME=str(fleet.tmp))
    return subprocess.run(
        [str(Path(sys.executable).parent / "fleetctl"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_fail_and_boot_crash_roll_back_and_are_quarantined(fleet: Fleet) -> None:
    agent = fleet.start_agent()
    health = fleet.publish("health-fail")
    crash = fleet.publish("boot-crash")

    # health-fail, started with the operator's CLI
    started = _fleetctl(fleet, "device", "update", DEVICE, "--bundle", health, "--json")
    assert started.returncode == 0, started.stderr
    ex = fleet.finished(json.loads(started.stdout)["id"])
    assert (ex["status"], ex["failure_class"], ex["phase"]) == ("failed", "health", "rolled_back")
    assert "health check failed" in ex["reason"]
    assert states(ex)[-2:] == ["trial", "rolled_back"]
    wait_for(lambda: running_version(fleet.slots_dir) == INITIAL_VERSION, timeout=15)
    assert committed_version(fleet.slots_dir) == INITIAL_VERSION
    # the trial boot named 1.3.0; the rollback report puts the registry back
    wait_for(lambda: fleet.device()["software_version"] == INITIAL_VERSION, timeout=15)

    # boot-crash: the agent dies in every trial boot until its attempts run out
    r = fleet.update(DEVICE, crash)
    assert r.status_code == 202, r.text
    ex = fleet.finished(r.json()["id"], timeout=60)
    assert (ex["status"], ex["failure_class"], ex["phase"]) == ("failed", "boot", "rolled_back")
    assert "while trial" in ex["reason"]
    assert agent.exits.count(EXIT_SIMULATED_CRASH) == 3, agent.exits
    wait_for(lambda: running_version(fleet.slots_dir) == INITIAL_VERSION, timeout=15)
    assert committed_version(fleet.slots_dir) == INITIAL_VERSION
    wait_for(lambda: fleet.device()["software_version"] == INITIAL_VERSION, timeout=15)

    # Asking again for a quarantined version: the server sends it (it has no quarantine of
    # its own), the agent refuses the command, and the execution fails at once quoting it.
    for bundle in (health, crash):
        again = fleet.update(DEVICE, bundle)
        assert again.status_code == 202, again.text
        refused = fleet.finished(again.json()["id"], timeout=20)
        assert refused["status"] == "failed", refused
        assert refused["failure_class"] is None
        assert states(refused) == ["sent", "rejected"]
        assert "rejected the install command" in refused["reason"]
        assert "quarantined" in refused["reason"]
    assert running_version(fleet.slots_dir) == INITIAL_VERSION


# -- 3. a tampered target -------------------------------------------------------------------


def test_tampered_target_fails_as_an_attack_and_leaves_the_slots_alone(fleet: Fleet) -> None:
    fleet.start_agent()
    name = fleet.publish("good-1.2.0")
    tamper_target(fleet.repo_dir, name, offset=100)
    before = slots_on_disk(fleet.slots_dir)
    r = fleet.update(DEVICE, name)
    assert r.status_code == 202, r.text
    ex = fleet.finished(r.json()["id"])
    assert (ex["status"], ex["failure_class"], ex["attack"]) == (
        "failed",
        "security",
        "tampered_target",
    )
    assert states(ex) == ["sent", "downloading", "failed"]
    assert slots_on_disk(fleet.slots_dir) == before, "inactive slot untouched"
    assert fleet.device()["software_version"] == INITIAL_VERSION


# -- 4. wrong hardware ------------------------------------------------------------------------


def test_wrong_hardware_is_refused_by_the_server_and_by_the_agent(fleet: Fleet) -> None:
    name = fleet.publish("wrong-hardware")  # built for rev-z only
    # The server refuses a device registered as rev-a.
    r = fleet.update(DEVICE, name)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "incompatible"
    # A device whose registry entry claims rev-z while the board really is rev-a: the
    # server lets it through, the agent checks its own hardware and refuses as an attack.
    patched = httpx.patch(
        f"{fleet.live.url}/api/v1/devices/{DEVICE}",
        json={"hw_revision": "rev-z"},
        headers=fleet.hdr(),
        timeout=10,
    )
    assert patched.status_code == 200, patched.text
    fleet.start_agent(hardware_revision="rev-a")
    before = slots_on_disk(fleet.slots_dir)
    r = fleet.update(DEVICE, name)
    assert r.status_code == 202, r.text
    ex = fleet.finished(r.json()["id"])
    assert (ex["status"], ex["failure_class"], ex["attack"]) == (
        "failed",
        "security",
        "wrong_hardware",
    )
    assert "rev-a" in ex["reason"]
    assert slots_on_disk(fleet.slots_dir) == before


# -- 5. duplicate reports after a kill ------------------------------------------------------


@pytest.mark.parametrize("state", ["installed", "trial", "committed"])
def test_reports_repeated_after_a_kill_are_recorded_once(fleet: Fleet, state: str) -> None:
    """Killed right after persisting ``state``, the agent reports it (and the final ack)
    again from its next boot; the server keeps one history entry per state."""
    agent = fleet.start_agent(pause_in=state)
    name = fleet.publish("good-1.2.0")
    r = fleet.update(DEVICE, name)
    assert r.status_code == 202, r.text
    agent.kill_paused()
    ex = fleet.finished(r.json()["id"])
    assert ex["status"] == "committed", ex
    assert states(ex) == WALK_OK
    wait_for(lambda: fleet.device()["software_version"] == "1.2.0", timeout=15)
    assert running_version(fleet.slots_dir) == "1.2.0"
