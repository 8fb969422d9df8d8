"""The on-disk outbox and the state file: order, bounds, drop counts, durability."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.state import StateFile, read_state
from agent.store import Limits, MemoryOutbox, Outbox, SqliteOutbox


@pytest.fixture(params=["sqlite", "memory"])
def make_outbox(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(limits: Limits) -> Outbox:
        if request.param == "sqlite":
            return SqliteOutbox(tmp_path / "outbox.db", limits)
        return MemoryOutbox(limits)

    return make


def test_delivers_in_seq_order_and_forgets_only_acked(make_outbox) -> None:  # type: ignore[no-untyped-def]
    box = make_outbox(Limits())
    for seq in (3, 1, 2):
        box.put(seq, "t", f"m{seq}".encode(), ts=100.0)
    assert [q.seq for q in box.after(-1, 10)] == [1, 2, 3]
    assert [q.seq for q in box.after(1, 1)] == [2]
    box.ack([1, 3, 99])
    assert [q.payload for q in box.after(-1, 10)] == [b"m2"]
    assert box.size_bytes() == 2
    assert box.max_seq() == 2


def test_byte_bound_drops_oldest_first_and_counts_samples(make_outbox) -> None:  # type: ignore[no-untyped-def]
    box = make_outbox(Limits(max_bytes=4096))
    for seq in range(10):
        box.put(seq, "t", bytes(1000), ts=100.0 + seq, samples=5)
    assert box.size_bytes() <= 4096
    kept = [q.seq for q in box.after(-1, 100)]
    assert kept == [6, 7, 8, 9]
    assert box.dropped_samples == 30
    assert box.dropped_messages == 6
    box.put(10, "t", bytes(5000), ts=200.0, samples=2)  # larger than the bound itself
    assert box.dropped_samples == 32
    assert [q.seq for q in box.after(-1, 100)] == kept


def test_age_bound_drops_and_counts(make_outbox) -> None:  # type: ignore[no-untyped-def]
    box = make_outbox(Limits(max_age_s=60))
    box.put(1, "t", b"old", ts=0.0, samples=3)
    box.put(2, "t", b"new", ts=100.0, samples=3)
    box.prune(now=130.0)
    assert [q.seq for q in box.after(-1, 10)] == [2]
    assert box.dropped_samples == 3


def test_stashed_samples_are_cleared_by_the_batch_that_carries_them(make_outbox) -> None:  # type: ignore[no-untyped-def]
    box = make_outbox(Limits())
    box.stash(b"s1")
    box.stash(b"s2")
    assert box.stashed() == [b"s1", b"s2"]
    box.put(1, "t", b"batch", ts=1.0, samples=2, clear_stash=True)
    assert box.stashed() == []


def test_sqlite_outbox_survives_reopen_with_its_counters(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, Limits(max_bytes=4096))
    for seq in range(6):
        box.put(seq, "t", bytes(1000), ts=1.0, samples=1)
    box.stash(b"pending")
    box.close()
    again = SqliteOutbox(path, Limits(max_bytes=4096))
    assert [q.seq for q in again.after(-1, 10)] == [2, 3, 4, 5]
    assert again.size_bytes() == 4000
    assert again.dropped_samples == 2
    assert again.stashed() == [b"pending"]
    again.close()


def test_state_file_is_written_atomically_and_corruption_is_set_aside(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    assert state.load() == {}
    state.save(seq_reserved=1000, starts=[1.0])
    assert read_state(tmp_path) == {"seq_reserved": 1000, "starts": [1.0]}
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "state.json").stat().st_mode & 0o077 == 0
    (tmp_path / "state.json").write_text('{"seq_reserved": 10')
    broken = StateFile(tmp_path)
    assert broken.load() == {}
    assert broken.was_corrupt
    assert json.loads((tmp_path / "state.json.corrupt").read_text().replace("10", "10}")) == {
        "seq_reserved": 10
    }
