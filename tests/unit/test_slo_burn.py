"""Multi-window, multi-burn-rate SLO alerts on a synthetic outage, the error budget and
its exhaustion estimate, and the 90-day availability of the status page (pure)."""

from __future__ import annotations

import pytest

from fleet_server.domain.slo import Series, Slo, daily_availability, evaluate_slo

SLO = Slo("api_availability", 0.999, 30)
START = 19_444 * 1440  # a minute number (epoch minutes), midnight UTC
PER_MIN = 1000


def traffic(minutes: int, outage: tuple[int, int] | None, outage_error: float = 0.2) -> Series:
    """``minutes`` of 1000 requests a minute with one error every other minute (0.05 %,
    half the budget), and
    ``outage_error`` of them failing during ``[a, b)`` (minutes from the start)."""
    data = {}
    for m in range(minutes):
        bad = 1 if m % 2 else 0
        if outage and outage[0] <= m < outage[1]:
            bad = outage_error * PER_MIN
        data[START + m] = (int(PER_MIN - bad), PER_MIN)
    return Series(data)


def at(minute: int) -> float:
    return (START + minute) * 60.0


def test_quiet_service_fires_nothing_and_keeps_its_budget() -> None:
    status = evaluate_slo(SLO, traffic(3 * 1440, None), at(3 * 1440))
    assert status.alerts == ()
    assert status.sli == pytest.approx(0.9995)
    assert status.budget_remaining == pytest.approx(0.5)


def test_outage_pages_within_minutes_and_stops_after_recovery() -> None:
    day3 = 3 * 1440
    series = traffic(day3 + 120, (day3, day3 + 30))
    # Two minutes in: 1 h burn = (29 + 400) / 60000 / 0.001 = 7.15, below 14.4.
    early = evaluate_slo(SLO, series, at(day3 + 2))
    assert early.alerts == ()
    # Five minutes in: 1 h burn = (27.5 + 1000) / 60000 / 0.001 = 17.1 and 5 min = 200.
    fired = evaluate_slo(SLO, series, at(day3 + 5))
    assert [(a.severity, a.factor) for a in fired.alerts] == [("page", 14.4)]
    assert fired.alerts[0].long_burn == pytest.approx(17.125, rel=1e-3)
    # The budget runs out at this rate in (remaining * 30 days) / burn.
    assert fired.exhausted_at is not None
    expected = at(day3 + 5) + fired.budget_remaining * 30 * 86400 / fired.burn_1h
    assert fired.exhausted_at == pytest.approx(expected)
    # Thirty minutes in, the 6 h / 30 min rule fires as well, and so does the 3-day
    # ticket rule (6000 failures on top of three days at half the budget).
    worse = evaluate_slo(SLO, series, at(day3 + 30))
    assert {a.factor for a in worse.alerts} == {14.4, 6.0, 1.0}
    # Ten minutes after recovery the 1 h window is still hot but the 5 min one is
    # clean, so the fast page has stopped; the 6 h rule's 30 min window still holds it.
    after = evaluate_slo(SLO, series, at(day3 + 40))
    assert {a.factor for a in after.alerts} == {6.0, 1.0}
    assert after.budget_remaining < 0  # 6000 failures over 30 days of budget: spent


def test_slow_burn_opens_a_ticket_level_alert() -> None:
    # 0.15 % errors for three days: burn 1.5 over 3 days and over 6 h, never a page.
    minutes = 3 * 1440
    series = Series({START + m: (PER_MIN - (1 if m % 2 else 2), PER_MIN) for m in range(minutes)})
    status = evaluate_slo(SLO, series, at(minutes))
    assert [(a.severity, a.factor) for a in status.alerts] == [("ticket", 1.0)]


def test_daily_availability_over_90_days() -> None:
    series = traffic(2 * 1440, (1440, 1440 + 60), outage_error=1.0)
    days = daily_availability(series, START + 2 * 1440 - 1, 90)
    assert len(days) == 90
    assert days[:88] == [None] * 88
    assert days[88] == pytest.approx(0.9995)
    assert days[89] == pytest.approx(1 - (60 * 1000 + 690) / 1_440_000, abs=1e-6)
