"""Presence backstop, clock skew, command TTL and quarantine: the pure rules (issue 14)."""

from __future__ import annotations

import re

from agent.config import parse_config
from agent.core.commands import CommandIntake
from fleet_server.config import Settings
from fleet_server.domain.clock_skew import is_skewed, offset_estimate, skew_message
from fleet_server.domain.presence import (
    UNKNOWN,
    Defaults,
    PresenceMessage,
    apply_presence,
    is_timed_out,
    silence_bound,
)
from fleet_server.domain.quarantine import quarantines
from protocol import CheckUpdate, RejectReason
from protocol.times import iso


def test_server_presence_defaults_agree_with_the_agent_defaults() -> None:
    agent = parse_config({"device_id": "pi-1", "broker": "mqtt://127.0.0.1:1883"})
    server = Settings().presence
    assert server.default_keepalive_s == agent.keepalive_s
    assert server.default_interval_s == agent.publish_interval_s
    bound = silence_bound(
        None, None, Defaults(server.default_keepalive_s, server.default_interval_s)
    )
    # A device on defaults sends every publish interval: the sweep waits for two of them.
    assert bound * server.timeout_factor >= 2 * agent.publish_interval_s
    assert not is_timed_out(0.0, bound, server.timeout_factor, agent.publish_interval_s * 1.9)


def test_the_silence_bound_is_the_longer_of_keepalive_and_announced_interval() -> None:
    defaults = Defaults(30, 60)
    assert silence_bound(30, 600, defaults) == 600
    assert silence_bound(30, 10, defaults) == 30
    assert silence_bound(None, 10, defaults) == 30
    assert silence_bound(5, None, defaults) == 60
    # The old rule (1.5 x keepalive 30 = 45 s) timed out a device publishing every 60 s.
    assert not is_timed_out(100.0, silence_bound(30, 60, defaults), 1.5, 160.0)


def test_a_future_stamped_presence_of_another_boot_loses_to_a_new_boot() -> None:
    ahead = apply_presence(UNKNOWN, PresenceMessage(False, "b1", 50, 10_000.0))
    assert ahead is not None
    fresh = PresenceMessage(True, "b2", 1, 1_000.0)  # lost state: seq restarted lower
    assert apply_presence(ahead, fresh) is None  # by device time alone it would lose
    won = apply_presence(ahead, fresh, now=1_000.0, max_skew_s=120.0)
    assert won is not None
    assert won.online is True
    # A held ts within the bound still orders as before.
    near = apply_presence(UNKNOWN, PresenceMessage(False, "b1", 50, 1_050.0))
    assert near is not None
    assert apply_presence(near, fresh, now=1_000.0, max_skew_s=120.0) is None


def test_clock_offset_takes_the_least_delayed_message_and_is_judged_by_the_bound() -> None:
    # (device ts, received at): transit only delays receipt.
    assert offset_estimate([(1000.0, 1002.0), (1010.0, 1010.5)]) == -0.5
    assert offset_estimate([]) is None
    assert offset_estimate([(4600.0, 1000.0)]) == 3600.0
    assert is_skewed(3600.0, 120.0)
    assert is_skewed(-121.0, 120.0)
    assert not is_skewed(119.0, 120.0)
    assert not is_skewed(None, 120.0)
    assert "3600 s ahead" in skew_message(3600.0, 120.0)
    assert "behind" in skew_message(-300.0, 120.0)


def _check(expires_at: float, ttl_s: float | None) -> CheckUpdate:
    return CheckUpdate(
        device_id="pi-1", boot_id="srv", seq=1, ts=0.0, id="c1", expires_at=expires_at, ttl_s=ttl_s
    )


def test_a_ttl_is_judged_from_receipt_and_expires_at_only_without_one() -> None:
    now = 1_796_198_430.0  # the device clock, far ahead of the server's deadline
    assert not _check(now - 1000, ttl_s=300).is_expired(now)
    assert _check(now - 1000, ttl_s=300).is_expired(now, held_s=300)
    assert _check(now - 1000, ttl_s=None).is_expired(now)
    assert not _check(now + 1, ttl_s=None).is_expired(now)


def test_the_agent_says_when_a_command_expired_with_iso_dates() -> None:
    intake = CommandIntake()
    out = intake.receive(_check(1_796_196_941.0, ttl_s=None), 1_796_198_430.0)
    assert out.decision is not None
    assert out.decision.reason is RejectReason.EXPIRED
    detail = out.decision.detail
    assert iso(1_796_196_941.0) in detail
    assert iso(1_796_198_430.0) in detail
    assert "1796196941" not in detail
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iso(0.0))


def test_only_a_failed_install_boot_or_health_check_quarantines() -> None:
    for failure in ("install", "boot", "health"):
        assert quarantines(failure, 100.0, None)
    for transient in (None, "timeout", "download", "verification"):
        assert not quarantines(transient, 100.0, None)
    # unquarantine: failures finished before it no longer count, later ones do
    assert not quarantines("install", 100.0, 200.0)
    assert quarantines("install", 300.0, 200.0)
