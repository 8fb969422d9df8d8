"""Support analytics: the offline ``fleetctl analytics sla`` over a ServiceNow-style event
log (hand-checked numbers), the shared parser's errors by line and column, Kaplan-Meier
with censoring, weekly compliance intervals, the weekly-seasonal forecast and the
release spike check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fleet_server.analytics.errors import AnalyticsInputError
from fleet_server.analytics.servicenow import LogFormatError, parse_log
from fleet_server.analytics.support import (
    Closed,
    forecast_daily,
    kaplan_meier,
    release_spike,
    weekly_compliance,
    wilson,
)
from fleet_server.fleetctl.cli import app

DATA = Path(__file__).resolve().parents[1] / "data"
H = 3600.0


def test_analytics_sla_json_has_the_issue_keys_and_hand_checked_numbers() -> None:
    result = CliRunner().invoke(
        app, ["analytics", "sla", "--csv", str(DATA / "servicenow_good.csv"), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    s = json.loads(result.stdout)
    assert (s["tickets"], s["open"], s["closed"], s["met"], s["breached"]) == (4, 1, 3, 2, 1)
    assert s["by_priority"] == {
        "1": {"met": 0, "breached": 1},
        "2": {"met": 1, "breached": 0},
        "3": {"met": 1, "breached": 0},
    }
    # INC0000047's flag turned false at its 09:40 update.
    assert s["breaches"] == [{"number": "INC0000047", "at": "2016-02-29T09:40:00Z"}]
    # 10 h 13 min, 28 h (reopened, resolved again), 3 h.
    assert s["hours_to_resolve"]["n"] == 3
    assert s["hours_to_resolve"]["median"] == pytest.approx(10.217)
    assert s["hours_to_resolve"]["p90"] == pytest.approx(24.443)
    table = CliRunner().invoke(
        app, ["analytics", "sla", "--csv", str(DATA / "servicenow_good.csv")]
    )
    assert "breach INC0000047" in table.stdout


def test_bad_log_is_refused_by_line_and_column(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["analytics", "sla", "--csv", str(DATA / "servicenow_bad.csv")]
    )
    assert result.exit_code == 2
    assert "line 3 [made_sla]" in result.stderr
    assert "line 4 [incident_state]: unknown state 'Sleeping'" in result.stderr
    with pytest.raises(LogFormatError) as info:
        parse_log("number,incident_state\nINC1,New\n")
    assert info.value.errors == [(1, "sys_updated_at", "required column missing")]
    # --date-format overrides the day-first default.
    iso = "number,incident_state,sys_updated_at,made_sla\nINC1,New,2016-02-29 01:16,true\n"
    with pytest.raises(LogFormatError):
        parse_log(iso)
    assert parse_log(iso, date_format="%Y-%m-%d %H:%M")[0].rows[0].at == 1456708560.0


def test_kaplan_meier_censors_open_tickets() -> None:
    # Resolved after 1, 2, 3 h; two still open at 10 h (censored, not "resolved at 10 h").
    spans = [(0.0, 1 * H), (0.0, 2 * H), (0.0, 3 * H), (0.0, None), (0.0, None)]
    km = kaplan_meier(spans, now=10 * H, horizons_h=(2.5, 8))
    assert (km["resolved"], km["censored"]) == (3, 2)
    assert km["still_open"] == {"2.5h": 0.6, "8h": 0.4}
    assert km["median_h"] == pytest.approx(3.0)
    with pytest.raises(AnalyticsInputError):
        kaplan_meier([], now=0)


def test_weekly_compliance_with_wilson_interval() -> None:
    monday = 1_767_571_200.0  # 2026-01-05 00:00 UTC
    items = [Closed(monday + i * 3600, i % 4 != 0) for i in range(20)]
    week = weekly_compliance(items)[0]
    assert (week["n"], week["met"], week["compliance"]) == (20, 15, 0.75)
    lo, hi = wilson(15, 20)
    assert (week["low"], week["high"]) == (round(lo, 4), round(hi, 4))
    assert week["week"] == "2026-01-05T00:00:00Z"


def test_forecast_learns_the_weekly_profile() -> None:
    weekday = [20, 22, 21, 23, 20, 5, 4]
    counts = weekday * 6
    fc = forecast_daily(counts, first_weekday=0, days=7)
    assert np.allclose(fc["forecast"], weekday, rtol=0.1)
    assert fc["weekly_profile"][5] < 0.4 < fc["weekly_profile"][0]
    with pytest.raises(AnalyticsInputError):
        forecast_daily([1] * 10, 0)


def test_release_spike_per_thousand_devices() -> None:
    spike = release_spike((30, 1000), (20, 4000))
    assert (spike["took"]["per_1000"], spike["did_not"]["per_1000"]) == (30.0, 5.0)
    assert spike["ratio"] == 6.0
    assert spike["spike"] is True
    calm = release_spike((6, 1000), (20, 4000))
    assert calm["spike"] is False
