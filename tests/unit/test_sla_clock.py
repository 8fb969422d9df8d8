"""The SLA clock and its calendars, with hand-computed cases: weekends, holidays, daylight
saving changes, pauses and reopenings (no database, no sleeps)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from fleet_server.domain.sla_calendar import ALWAYS, calendar_from_config
from fleet_server.domain.sla_clock import (
    HistoryEvent,
    SlaPolicy,
    Target,
    breaching_label,
    evaluate,
    new_crossings,
    select_policy,
    vendor_clock,
)
from fleet_server.errors import InvalidInputError

BERLIN = ZoneInfo("Europe/Berlin")
H = 3600.0
OFFICE = calendar_from_config(
    "office",
    {
        "tz": "Europe/Berlin",
        "hours": {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")},
        "holidays": ["2026-12-25"],
    },
)
ROUND_THE_CLOCK_LOCAL = calendar_from_config(
    "local-days",
    {
        "tz": "Europe/Berlin",
        "hours": {d: "00:00-24:00" for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
    },
)


def berlin(text: str) -> float:
    """Epoch seconds of a Berlin wall time ``YYYY-MM-DD HH:MM``."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


def policy(**targets_h: float) -> SlaPolicy:
    return SlaPolicy("p", {Target(k): v * H for k, v in targets_h.items()}, calendar="office")


def created(at: float) -> list[HistoryEvent]:
    return [HistoryEvent(at, "created")]


def st(at: float, state: str) -> HistoryEvent:
    return HistoryEvent(at, "state", state)


def test_weekend_is_skipped_and_warnings_fall_on_monday() -> None:
    t0 = berlin("2026-03-06 16:00")  # a Friday, one working hour left
    clock = evaluate(created(t0), policy(resolution=4), OFFICE, berlin("2026-03-09 11:30"))[
        Target.RESOLUTION
    ]
    assert clock.due_at == berlin("2026-03-09 12:00")
    assert clock.elapsed_s == pytest.approx(3.5 * H)
    assert clock.state == "running"
    assert not clock.breached
    assert clock.crossings == (
        (0.5, berlin("2026-03-09 10:00")),
        (0.75, berlin("2026-03-09 11:00")),
    )
    assert breaching_label(clock.due_at, berlin("2026-03-09 11:30")) == "breaching in 30 min"


def test_holiday_and_weekend_after_christmas_eve() -> None:
    t0 = berlin("2026-12-24 16:00")  # Thursday; Friday 25th is a holiday
    clock = evaluate(created(t0), policy(resolution=4), OFFICE, t0 + 60)[Target.RESOLUTION]
    assert clock.due_at == berlin("2026-12-28 12:00")


def test_public_holidays_from_the_holidays_package() -> None:
    cal = calendar_from_config(
        "de", {"tz": "Europe/Berlin", "hours": {"mon": "09:00-17:00"}, "country": "DE"}
    )
    easter_monday = berlin("2026-04-06 09:00")
    assert cal.working_seconds(easter_monday, easter_monday + 8 * H) == 0
    assert cal.add_working(easter_monday, H) == berlin("2026-04-13 10:00")


def test_spring_forward_moves_the_utc_deadline() -> None:
    t0 = berlin("2026-03-27 16:00")  # Friday CET (UTC+1); Monday is CEST (UTC+2)
    clock = evaluate(created(t0), policy(resolution=2), OFFICE, t0)[Target.RESOLUTION]
    assert clock.due_at == berlin("2026-03-30 10:00")
    assert clock.due_at - t0 == pytest.approx(3 * 86400 - 6 * H - H)  # one hour lost


def test_local_days_are_23_and_25_hours_long_across_dst() -> None:
    cal = ROUND_THE_CLOCK_LOCAL
    spring = cal.working_seconds(berlin("2026-03-29 00:00"), berlin("2026-03-30 00:00"))
    autumn = cal.working_seconds(berlin("2026-10-25 00:00"), berlin("2026-10-26 00:00"))
    assert (spring, autumn) == (23 * H, 25 * H)
    t0 = berlin("2026-03-28 12:00")
    assert cal.add_working(t0, 24 * H) == berlin("2026-03-29 13:00")


def test_pause_stops_the_clock_and_resume_restarts_it() -> None:
    t0 = 1_790_000_000.0
    hist = [*created(t0), st(t0 + 2 * H, "pending_customer"), st(t0 + 5 * H, "in_progress")]
    p = SlaPolicy("p", {Target.RESOLUTION: 8 * H})
    during = evaluate(hist, p, ALWAYS, t0 + 4 * H)[Target.RESOLUTION]
    assert (during.state, during.elapsed_s, during.due_at) == ("paused", 2 * H, None)
    after = evaluate(hist, p, ALWAYS, t0 + 7 * H)[Target.RESOLUTION]
    assert (after.state, after.elapsed_s, after.due_at) == ("running", 4 * H, t0 + 11 * H)


@pytest.mark.parametrize(("reset", "cycle", "elapsed"), [(True, 1, 1 * H), (False, 0, 4 * H)])
def test_reopen_resets_or_resumes_per_policy(reset: bool, cycle: int, elapsed: float) -> None:
    t0 = 1_790_000_000.0
    hist = [*created(t0), st(t0 + 3 * H, "resolved"), st(t0 + 10 * H, "reopened")]
    p = SlaPolicy("p", {Target.RESOLUTION: 8 * H}, reset_on_reopen=reset)
    stopped = evaluate(hist, p, ALWAYS, t0 + 5 * H)[Target.RESOLUTION]
    assert (stopped.state, stopped.elapsed_s, stopped.breached) == ("stopped", 3 * H, False)
    clock = evaluate(hist, p, ALWAYS, t0 + 11 * H)[Target.RESOLUTION]
    assert (clock.state, clock.cycle, clock.elapsed_s) == ("running", cycle, elapsed)


def test_first_response_then_next_update_cycles_and_breach() -> None:
    t0 = 1_790_000_000.0
    hist = [*created(t0), HistoryEvent(t0 + 1800, "response")]
    p = SlaPolicy("p", {Target.FIRST_RESPONSE: H, Target.NEXT_UPDATE: 2 * H})
    clocks = evaluate(hist, p, ALWAYS, t0 + 3 * H)
    fr, nu = clocks[Target.FIRST_RESPONSE], clocks[Target.NEXT_UPDATE]
    assert (fr.state, fr.elapsed_s, fr.breached) == ("stopped", 1800, False)
    assert (nu.state, nu.breached, nu.breached_at) == ("running", True, t0 + 2.5 * H)
    assert [th for th, _ in nu.crossings] == [0.5, 0.75, 1.0]
    # The tick reported 50 % already: only 75 % and the breach are new.
    assert [th for th, _ in new_crossings(nu, 0, 0.5)] == [0.75, 1.0]
    # A new response starts a fresh cycle: nothing reported for it yet.
    later = evaluate([*hist, HistoryEvent(t0 + 3 * H, "response")], p, ALWAYS, t0 + 3.5 * H)
    nu2 = later[Target.NEXT_UPDATE]
    assert (nu2.cycle, nu2.elapsed_s, nu2.crossings) == (1, 0.5 * H, ())
    assert new_crossings(nu2, 0, 1.0) == []


def test_cancel_is_neither_met_nor_breached() -> None:
    t0 = 1_790_000_000.0
    hist = [*created(t0), st(t0 + H, "cancelled")]
    clock = evaluate(hist, SlaPolicy("p", {Target.RESOLUTION: 0.5 * H}), ALWAYS, t0 + 2 * H)
    res = clock[Target.RESOLUTION]
    assert (res.state, res.breached, res.crossings) == ("cancelled", False, ())


def test_vendor_contract_counts_only_pending_third_party() -> None:
    t0 = 1_790_000_000.0
    hist = [
        *created(t0),
        st(t0 + H, "pending_third_party"),
        st(t0 + 3 * H, "in_progress"),
        st(t0 + 4 * H, "pending_third_party"),
    ]
    clock = vendor_clock(hist, 4 * H, ALWAYS, t0 + 5 * H)
    assert (clock.elapsed_s, clock.due_at) == (3 * H, t0 + 6 * H)


def test_policy_selection_and_calendar_errors() -> None:
    p1 = SlaPolicy("p1", {}, priorities=frozenset({1}))
    p2 = SlaPolicy("any", {})
    assert select_policy([p1, p2], 1, "device_hardware", None) is p1
    assert select_policy([p1, p2], 3, "device_hardware", None) is p2
    with pytest.raises(InvalidInputError, match="unknown time zone"):
        calendar_from_config("x", {"tz": "Mars/Olympus", "hours": {"mon": "09:00-17:00"}})
    with pytest.raises(InvalidInputError, match="overlap"):
        calendar_from_config("x", {"hours": {"mon": "09:00-12:00,11:00-13:00"}})
    with pytest.raises(InvalidInputError, match="no working hours"):
        calendar_from_config("x", {"hours": {}})
