"""The daemon's start-up on damaged or left-over state (no broker needed: it stays offline)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import pytest

from agent.daemon import AgentDaemon
from agent.store import SqliteOutbox
from protocol import Boot, Event, RebootReason, Sample
from tests.conftest import free_port, wait_for
from tests.integration.agent_harness import CountingCollector, RunningAgent, agent_config


def offline_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    return agent_config(
        f"mqtt://127.0.0.1:{free_port()}", tmp_path / "state", publish_interval_s=60
    )


def queued_boots(state: Path) -> list[Boot]:
    box = SqliteOutbox(state / "outbox.db")
    try:
        events = [msgspec.json.decode(q.payload, type=Event | Boot) for q in box.after(-1, 1000)]
    finally:
        box.close()
    return [e for e in events if isinstance(e, Boot)]


def test_seq_keeps_rising_across_crashes(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    for _ in range(3):
        daemon = AgentDaemon(config, collector=CountingCollector())
        daemon.outbox.close()  # crash: no clean stop
    boots = queued_boots(tmp_path / "state")
    assert [b.reason for b in boots] == [
        RebootReason.POWER_ON,
        RebootReason.AGENT_CRASH,
        RebootReason.AGENT_CRASH,
    ]
    seqs = [b.seq for b in boots]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert len({b.boot_id for b in boots}) == 3


def test_clean_restart_continues_the_sequence_without_a_gap(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    AgentDaemon(config, collector=CountingCollector()).shutdown()
    AgentDaemon(config, collector=CountingCollector()).shutdown()
    boots = queued_boots(tmp_path / "state")
    assert [b.seq for b in boots] == [0, boots[0].seq + 1]
    assert boots[1].reason == RebootReason.AGENT_RESTART


def test_corrupt_state_and_outbox_are_set_aside_not_fatal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text("{not json")
    (state / "outbox.db").write_bytes(b"this is not a database" * 100)
    daemon = AgentDaemon(offline_config(tmp_path), collector=CountingCollector())
    assert daemon.outbox.depth() == 1  # the new boot event
    daemon.shutdown()
    assert (state / "state.json.corrupt").exists()
    assert list(state.glob("outbox.db.corrupt-*"))


def test_a_refused_rule_state_is_logged_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = offline_config(tmp_path)
    AgentDaemon(config, collector=CountingCollector()).shutdown()
    state_file = tmp_path / "state" / "state.json"
    saved = json.loads(state_file.read_text())
    saved["core"]["faults"]["rules"]["over_temperature"] = {"active": "yes", "streak": -1}
    state_file.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="agent"):
        AgentDaemon(config, collector=CountingCollector()).shutdown()
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "over_temperature" in refusals[0]
    assert "learn again" in refusals[0]


def test_restart_loop_is_raised_after_many_starts(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    collector = CountingCollector()
    for _ in range(5):
        daemon = AgentDaemon(config, collector=collector)
        daemon.outbox.close()
    daemon = AgentDaemon(config, collector=collector)
    while collector.count < 1:
        daemon.step()
    assert "agent_restart_loop" in daemon.core.faults.open
    daemon.shutdown()


class FlakyCollector(CountingCollector):
    """Fails once, as a broken driver might."""

    def collect(self, ts: float) -> Sample:
        if self.count == 3 and not getattr(self, "failed", False):
            self.failed = True
            raise RuntimeError("sensor driver crashed")
        return super().collect(ts)


def test_an_unexpected_error_does_not_stop_the_agent(tmp_path: Path) -> None:
    collector = FlakyCollector()
    agent = RunningAgent(offline_config(tmp_path), collector)
    wait_for(lambda: collector.count >= 8, timeout=20)
    assert agent.thread.is_alive()
    assert agent.daemon.loop_errors_total == 1
    agent.stop()
