"""The agent and the fleet server's ingest together, through a real Mosquitto into a real
PostgreSQL: a broker outage with an agent restart in the middle loses nothing and stores
nothing twice; a buffer bound shorter than the outage drops the oldest samples and the
drop count reaches the server's registry."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_server.adapters.mqtt_ingest import IngestOptions, IngestWorker, wait_connected
from fleet_server.db import create_db_engine, make_session_factory
from fleet_server.db.models import Device, TelemetrySample
from fleet_server.migrations import upgrade_to_head
from fleet_server.services.ingest import BatchWriter
from tests.conftest import MosquittoBroker, wait_for
from tests.integration.agent_harness import (
    PERSISTENT_BROKER,
    CountingCollector,
    RunningAgent,
    agent_config,
)

pytestmark = [pytest.mark.mosquitto, pytest.mark.postgres]

DEVICE = "pi-test-1"


@dataclass
class ServerIngest:
    """The real ingest worker writing to PostgreSQL; read back what the fleet stored."""

    sessions: sessionmaker[Session]
    worker: IngestWorker
    thread: threading.Thread

    def samples_in_order(self) -> list[int]:
        """Sample numbers as stored for the device, in time order (duplicates would show)."""
        with self.sessions() as s:
            rows = s.execute(
                select(TelemetrySample.custom)
                .join(Device, Device.id == TelemetrySample.device_key)
                .where(Device.device_id == DEVICE)
                .order_by(TelemetrySample.ts)
            ).scalars()
            return [int(custom["n"]) for custom in rows]

    def dropped_total(self) -> int:
        """The device's buffer drops as the registry knows them."""
        with self.sessions() as s:
            value = s.execute(
                select(Device.dropped_total).where(Device.device_id == DEVICE)
            ).scalar_one_or_none()
            return int(value or 0)


@pytest.fixture
def broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory(PERSISTENT_BROKER)


@pytest.fixture
def server(broker: MosquittoBroker, postgres_url: str) -> Iterator[ServerIngest]:
    engine = create_db_engine(postgres_url)
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    worker = IngestWorker(
        BatchWriter(sessions, auto_register=True),
        IngestOptions(broker.host, broker.port, client_id="ingest-agent-test"),
    )
    worker.connect(timeout=10)
    assert wait_connected(worker, 10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    yield ServerIngest(sessions, worker, thread)
    worker.stop()
    thread.join(timeout=15)
    engine.dispose()


def test_outage_and_agent_restart_reach_the_database_exactly_once_in_order(
    broker: MosquittoBroker, server: ServerIngest, tmp_path: Path
) -> None:
    collector = CountingCollector()
    config = agent_config(broker.url, tmp_path / "state", device_id=DEVICE)
    first = RunningAgent(config, collector)
    wait_for(lambda: len(server.samples_in_order()) >= 5, timeout=20)

    broker.stop()
    outage_start = collector.count
    wait_for(lambda: collector.count >= outage_start + 20, timeout=15)
    first.stop()  # the agent restarts while the broker is still down
    second = RunningAgent(config, collector)
    restart_at = collector.count
    wait_for(lambda: collector.count >= restart_at + 20, timeout=15)
    outage_end = collector.count
    broker.start()

    wait_for(lambda: max(server.samples_in_order(), default=-1) >= outage_end + 5, timeout=40)
    second.stop()
    taken = list(collector.taken)
    wait_for(lambda: len(server.samples_in_order()) >= len(taken), timeout=30)

    stored = server.samples_in_order()
    assert stored == taken, "every sample stored exactly once, in the order it was taken"
    assert any(outage_start <= n < outage_end for n in stored)
    assert server.dropped_total() == 0


def test_bound_shorter_than_the_outage_drops_oldest_and_the_count_reaches_the_server(
    broker: MosquittoBroker, server: ServerIngest, tmp_path: Path
) -> None:
    limit = 4096
    collector = CountingCollector()
    config = agent_config(
        broker.url, tmp_path / "state", device_id=DEVICE, buffer={"max_bytes": limit}
    )
    agent = RunningAgent(config, collector)
    wait_for(lambda: len(server.samples_in_order()) >= 5, timeout=20)

    broker.stop()
    sizes: list[int] = []

    def dropped_enough() -> bool:
        sizes.append(agent.daemon.outbox.size_bytes())
        return agent.daemon.outbox.dropped_samples >= 30

    wait_for(dropped_enough, timeout=30)
    assert max(sizes) <= limit, "the on-disk queue never exceeds its bound"
    broker.start()
    wait_for(lambda: server.dropped_total() >= 30, timeout=40)
    wait_for(lambda: agent.daemon.outbox.size_bytes() <= limit // 2, timeout=30)
    agent.stop()
    final_drops = agent.daemon.outbox.dropped_samples
    taken = list(collector.taken)
    wait_for(
        lambda: (
            server.dropped_total() == final_drops
            and max(server.samples_in_order(), default=-1) == taken[-1]
        ),
        timeout=30,
    )

    stored = server.samples_in_order()
    assert stored == sorted(stored), "stored in order"
    assert len(stored) == len(set(stored)), "nothing stored twice"
    missing = sorted(set(taken) - set(stored))
    assert 0 < len(missing) <= final_drops
    assert missing == list(range(missing[0], missing[0] + len(missing))), "oldest, contiguous"
    assert server.dropped_total() == final_drops
