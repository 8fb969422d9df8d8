"""Presence ordering: late wills never override a newer online; restarts always recover."""

from __future__ import annotations

from fleet_server.domain.presence import (
    UNKNOWN,
    PresenceMessage,
    PresenceReason,
    apply_presence,
    is_timed_out,
    mark_timeout,
    mark_traffic,
)


def run(*messages: tuple[bool, str, int, float]):
    held = UNKNOWN
    for online, boot, seq, ts in messages:
        new = apply_presence(held, PresenceMessage(online, boot, seq, ts))
        if new is not None:
            held = new
    return held


def test_online_then_will_of_the_same_connection_goes_offline() -> None:
    held = run((True, "b1", 11, 100.0), (False, "b1", 10, 100.0))
    assert held.online is False
    assert held.reason is PresenceReason.OFFLINE


def test_late_will_of_an_older_connection_is_ignored() -> None:
    # connection 1: will 10, online 11; connection 2: will 12, online 13; will 10 late
    held = run((True, "b1", 11, 100.0), (True, "b1", 13, 200.0), (False, "b1", 10, 100.0))
    assert held.online is True
    assert held.seq == 13
    # ... while the current connection's will still applies
    held = apply_presence(held, PresenceMessage(False, "b1", 12, 200.0))
    assert held is not None
    assert held.online is False


def test_stale_online_after_clean_offline_is_ignored() -> None:
    held = run((True, "b1", 11, 100.0), (False, "b1", 20, 150.0), (True, "b1", 11, 100.0))
    assert held.online is False


def test_will_from_a_previous_boot_is_ignored() -> None:
    held = run((True, "b2", 30, 500.0), (False, "b1", 12, 200.0))
    assert held.online is True
    assert held.boot_id == "b2"


def test_device_that_lost_its_state_is_not_stuck_offline() -> None:
    # seq restarts at 1 under a new boot id, with a newer timestamp: it wins
    held = run((True, "b1", 500, 100.0), (False, "b1", 499, 100.0), (True, "b9", 1, 900.0))
    assert held.online is True
    assert held.boot_id == "b9"
    # and a late will of the old boot (higher seq, older ts) cannot knock it offline
    assert apply_presence(held, PresenceMessage(False, "b1", 499, 100.0)) is None


def test_new_boot_with_clock_behind_but_higher_seq_wins() -> None:
    held = run((True, "b1", 10, 1000.0), (True, "b2", 12, 50.0))
    assert held.boot_id == "b2"


def test_timeout_and_traffic() -> None:
    assert not is_timed_out(None, 30, 1.5, 1e9)
    assert not is_timed_out(100.0, 30, 1.5, 145.0)
    assert is_timed_out(100.0, 30, 1.5, 145.1)
    held = run((True, "b1", 1, 100.0))
    timed_out = mark_timeout(held)
    assert timed_out.online is False
    back = mark_traffic(timed_out)
    assert back is not None
    assert back.online is True
    # a will-offline device does not come back on stray traffic
    assert mark_traffic(run((True, "b1", 2, 1.0), (False, "b1", 1, 1.0))) is None
