"""The failed-token window: per source, sliding, temporary, bounded."""

from __future__ import annotations

from fleet_server.api.auth_throttle import FailureWindow


def test_the_tenth_failure_in_the_window_blocks_that_source_only() -> None:
    window = FailureWindow(limit=10, window_s=60, block_s=60)
    assert [window.record_failure("a", float(t)) for t in range(9)] == [False] * 9
    assert window.retry_after("a", 9.0) is None
    assert window.record_failure("a", 9.0) is True
    assert window.retry_after("a", 9.5) == 60
    assert window.retry_after("a", 68.2) == 1
    assert window.retry_after("a", 69.0) is None  # the block ends
    assert window.retry_after("b", 10.0) is None


def test_failures_older_than_the_window_are_forgotten() -> None:
    window = FailureWindow(limit=3, window_s=60, block_s=60)
    window.record_failure("a", 0.0)
    window.record_failure("a", 1.0)
    assert window.record_failure("a", 61.5) is False  # the first two slid out
    assert window.retry_after("a", 61.5) is None


def test_the_table_of_sources_is_bounded() -> None:
    window = FailureWindow(limit=2, window_s=60, block_s=60, max_sources=100)
    for i in range(1000):
        window.record_failure(f"10.0.{i // 250}.{i % 250}", 0.0)
    assert len(window._sources) == 100
