"""Per-device ingest budget, throttle reports and ingest readiness: the pure decisions."""

from __future__ import annotations

import protocol as p
from fleet_server.services.ingest_budget import BudgetPolicy, DeviceBudget, ThrottleLedger
from fleet_server.services.ingest_health import IngestStatus, ReadinessPolicy, readiness

T0 = 1_700_000_000.0


def _telemetry(seq: int, samples: int) -> bytes:
    """An agent telemetry message as the agent batches it (``samples`` samples)."""
    rows = [
        p.Sample(ts=T0 + seq * 60 + i, cpu_pct=12.5, mem_pct=40.0, temp_c=51.25, disk_pct=33.0)
        for i in range(samples)
    ]
    msg = p.Telemetry(device_id="pi-1", boot_id="b" * 32, seq=seq, ts=T0 + seq, samples=rows)
    return p.encode(msg)


def test_a_device_back_from_a_week_offline_is_not_throttled() -> None:
    """At agent defaults (a telemetry message of 6 samples a minute) a week offline is
    10,080 messages, replayed at once after reconnecting (here 1,000 msg/s)."""
    budget = DeviceBudget()
    payload = _telemetry(1, 6)
    week = 7 * 24 * 60
    for i in range(week):
        assert budget.admit("pi-1", len(payload), T0 + i / 1000)
    assert budget.take_excess() == {}


def test_a_full_agent_outbox_fits_the_byte_burst() -> None:
    """The agent's outbox holds at most 50 MiB; its replay of 2,000-sample batches fits."""
    budget = DeviceBudget()
    payload = _telemetry(1, 2000)
    assert len(payload) <= p.MAX_PAYLOAD_BYTES[p.Kind.TELEMETRY]
    n = 50 * 1024 * 1024 // len(payload)
    assert all(budget.admit("pi-1", len(payload), T0) for _ in range(n))


def test_a_flood_is_cut_at_the_burst_and_refills_at_the_rate() -> None:
    budget = DeviceBudget(BudgetPolicy(messages_per_s=2, message_burst=10))
    admitted = [budget.admit("pi-flood", 2048, T0) for _ in range(100)]
    assert admitted.count(True) == 10
    excess = budget.take_excess()
    assert excess["pi-flood"].messages == 90
    assert excess["pi-flood"].bytes == 90 * 2048
    assert budget.take_excess() == {}  # reset by taking
    # Other devices are untouched by the flood.
    assert all(budget.admit("pi-good", 2048, T0) for _ in range(10))
    # 2 msg/s: five seconds later ten more fit, the eleventh does not.
    assert [budget.admit("pi-flood", 10, T0 + 5) for _ in range(11)].count(True) == 10


def test_the_byte_bucket_limits_big_messages() -> None:
    budget = DeviceBudget(BudgetPolicy(bytes_per_s=1000, byte_burst=10_000))
    assert budget.admit("pi-1", 10_000, T0)
    assert not budget.admit("pi-1", 1, T0)
    assert budget.admit("pi-1", 1000, T0 + 1)


def test_full_buckets_are_forgotten_above_max_devices() -> None:
    budget = DeviceBudget(BudgetPolicy(messages_per_s=1, message_burst=5, max_devices=100))
    for i in range(100):
        budget.admit(f"pi-{i}", 1, T0)
    assert budget.tracked == 100
    budget.admit("pi-new", 1, T0 + 10)  # the old buckets are full again: forgotten
    assert budget.tracked == 1


def test_ledger_warns_once_a_minute_and_closes_after_quiet() -> None:
    budget = DeviceBudget(BudgetPolicy(messages_per_s=0.001, message_burst=1))
    ledger = ThrottleLedger(warn_every_s=60, flush_every_s=5, quiet_s=600)
    budget.admit("pi-f", 1, T0)
    budget.admit("pi-f", 1, T0)
    news = ledger.add(budget.take_excess(), T0)
    assert set(news.alarm) == {"pi-f"}
    assert news.alarm["pi-f"].messages == 1
    assert news.warn["pi-f"].messages == 1
    budget.admit("pi-f", 1, T0 + 1)
    news = ledger.add(budget.take_excess(), T0 + 1)
    assert not news.warn
    assert not news.alarm
    news = ledger.add({}, T0 + 6)
    assert news.alarm["pi-f"].messages == 1
    assert not news.warn
    news = ledger.add({}, T0 + 61)  # a minute on: the excess held back is warned about
    assert news.warn["pi-f"].messages == 1
    assert news.close == []
    assert ledger.add({}, T0 + 62).warn == {}
    assert ledger.add({}, T0 + 601).close == ["pi-f"]


def _status(**policy: float) -> IngestStatus:
    return IngestStatus(T0, ReadinessPolicy(sys_interval_s=1, stable_s=5, **policy))


def test_ready_once_connected_with_a_heartbeat() -> None:
    s = _status()
    assert readiness(s, T0) == ["not connected to the broker yet"]
    s.connected(T0, persistent=True, session_present=False)  # first start: no session yet
    s.heartbeat("$SYS/broker/uptime", b"12 seconds", T0 + 1)
    assert readiness(s, T0 + 2) == []
    assert "no broker heartbeat" in readiness(s, T0 + 5)[0]


def test_a_short_reconnect_is_ready_a_long_outage_is_not() -> None:
    s = _status()
    s.connected(T0, persistent=True, session_present=False)
    s.disconnected(T0 + 1, expected=False)
    assert readiness(s, T0 + 5) == []
    assert "disconnected from the broker for 20s" in readiness(s, T0 + 21)


def test_flapping_and_a_lost_session_until_stable_again() -> None:
    s = _status()
    s.connected(T0, persistent=True, session_present=False)
    verdicts = []
    for i in range(1, 4):
        s.disconnected(T0 + i, expected=False)
        verdicts.append(s.connected(T0 + i + 0.5, persistent=True, session_present=False))
    assert all(v.session_lost for v in verdicts)
    assert [v.displaced for v in verdicts] == [False, False, True]  # reported once
    s.heartbeat("$SYS/broker/uptime", b"1", T0 + 4)
    reasons = readiness(s, T0 + 4)
    assert any("flapping" in r for r in reasons)
    assert any("lost the ingest's persistent session" in r for r in reasons)
    s.heartbeat("$SYS/broker/uptime", b"1", T0 + 9)
    assert readiness(s, T0 + 9) == []  # connected 5.5 s without a disconnect


def test_a_stalled_backlog_is_not_ready() -> None:
    s = _status(stall_s=30)
    s.connected(T0, persistent=True, session_present=True)
    s.received(T0 + 100)
    s.heartbeat("$SYS/broker/uptime", b"1", T0 + 120)
    assert readiness(s, T0 + 120) == []  # an idle hour before does not count
    s.heartbeat("$SYS/broker/uptime", b"1", T0 + 131)
    assert "1 messages waiting" in readiness(s, T0 + 131)[0]
    s.settled(1, T0 + 131)
    assert readiness(s, T0 + 131) == []


def test_broker_drops_are_reported_as_they_rise() -> None:
    s = _status()
    topic = "$SYS/broker/publish/messages/dropped"
    assert s.heartbeat(topic, b"0", T0) == 0
    assert s.heartbeat(topic, b"7", T0 + 1) == 7
    assert s.heartbeat(topic, b"7", T0 + 2) == 0
    assert s.broker.dropped == 7
    fresh = _status()
    assert fresh.heartbeat(topic, b"3", T0) == 3  # drops since the broker started
