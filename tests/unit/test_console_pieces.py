"""Pure pieces of the console: ingest panel, Weibull plot points, criteria evidence."""

from __future__ import annotations

import math

from fleet_server.analytics.weibull_plot import weibull_plot
from fleet_server.console.ingest_panel import ingest_health
from fleet_server.rollouts.evidence_table import criteria_evidence
from fleet_server.rollouts.policy import parse_policy
from fleet_server.services.ingest_health import IngestStatus
from fleet_server.services.metrics import IngestMetrics


def test_ingest_panel_needs_an_ingest_and_computes_a_rate() -> None:
    metrics = IngestMetrics()
    assert ingest_health(metrics, 100.0) is None  # no ingest worker in this process
    metrics.status = IngestStatus(started_at=0.0)
    metrics.messages.labels(kind="telemetry").inc(10)
    first = ingest_health(metrics, 100.0)
    assert first is not None
    assert first["messages_per_s"] is None
    metrics.messages.labels(kind="telemetry").inc(50)
    metrics.rejected.labels(reason="malformed").inc(2)
    metrics.lag.set(0.25)
    second = ingest_health(metrics, 105.0)
    assert second is not None
    assert second["messages_per_s"] == 10.0
    assert second["rejected"] == {"malformed": 2}
    assert second["accepted"]["telemetry"] == 60
    assert second["lag_s"] == 0.25


def test_weibull_plot_is_a_straight_line_of_slope_beta_inside_its_band() -> None:
    fit = {"beta": 2.0, "eta": 500.0, "beta_ci": [1.5, 2.5], "eta_ci": [400.0, 650.0]}
    plot = weibull_plot(fit)
    assert plot is not None
    x, y = plot["x"], plot["line"]
    slope = (y[-1] - y[0]) / (x[-1] - x[0])
    assert math.isclose(slope, 2.0)
    assert all(lo <= v <= hi for lo, v, hi in zip(plot["lower"], y, plot["upper"], strict=True))
    assert weibull_plot({"beta": None, "eta": 3.0}) is None


def test_criteria_evidence_counts_executed_devices_and_trips() -> None:
    policy = parse_policy({"failure_criteria": [{"failure_class": "any", "max_rate": 0.05,
                                                 "pass_gate": True},
                                                {"failure_class": "security", "max_rate": 0.01,
                                                 "max_failures": 0}]})  # fmt: skip
    status = {
        "waves": [{"wave": 0, "committed": 40, "failed": 10, "pending": 50}],
        "failures_by_class": {"boot": 9, "security": 1},
    }
    rows = {r["failure_class"]: r for r in criteria_evidence(policy, status)}
    assert rows["any"]["executed"] == 50
    assert rows["any"]["failures"] == 10
    assert rows["any"]["trips"]  # 10/50 is credibly above 5 %
    assert rows["security"]["trips"]  # one security failure is over max_failures 0
    assert rows["any"]["lower_bound"] < 0.2 < rows["any"]["upper_bound"]
