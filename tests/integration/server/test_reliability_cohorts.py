"""The reliability services read devices as cohorts (one grouped query); their results
must equal the per-unit computation they replaced. The reference below is that per-unit
computation, kept here only as the oracle, on a small fleet with the awkward cases:
decommissioned units, units not yet active, a claim before activation, a claim on the
last day, a rejected claim, repeated claims, a unit with no batch, another model."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import pytest

from fleet_server.analytics import crow_amsaa, weibull_mle
from fleet_server.analytics.weibull_plot import weibull_plot
from fleet_server.db.models import Device, WarrantyClaim
from fleet_server.services import reliability
from fleet_server.services.reliability import DAYS_PER_MONTH, plotting_positions

TODAY = date(2026, 6, 1)


def _ts(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def _seed(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s, s.begin():
        for i in range(60):
            start = date(2025, 1, 1) + timedelta(days=(i % 12) * 23)
            d = Device(
                device_id=f"u-{i}",
                model="m-2" if i % 10 == 9 else "m-1",
                batch=None if i == 5 else f"lot-{i % 3}",
                activation_date=date(2026, 7, 1) if i == 7 else start,
                decommissioned_at=_ts(start + timedelta(days=200)) if i % 11 == 0 else None,
                created_at=0.0,
                software_version=f"1.{i % 2}",
            )
            s.add(d)
            s.flush()
            dates = []
            if i % 4 == 0:
                dates.append(start + timedelta(days=30 + 7 * i))
            if i == 8:
                dates += [start - timedelta(days=3), start + timedelta(days=400)]
            if i == 11:
                dates.append(start + timedelta(days=200))  # its decommissioning day
            if i == 12:
                dates.append(start)  # the activation day
            for k, when in enumerate(dates):
                s.add(
                    WarrantyClaim(
                        device_ref=d.device_id,
                        device_key=d.id,
                        failure_mode="fan" if k == 0 else "psu",
                        failure_date=when,
                        state="rejected" if i == 16 else "approved",
                        checks=[],
                        evidence={},
                        created_at=0.0,
                        created_by="t",
                    )
                )


def _units(s, model=None):  # type: ignore[no-untyped-def]
    out = []
    for d in s.query(Device).all():
        start = d.activation_date
        if start is None or start > TODAY or (model and d.model != model):
            continue
        end = (
            min(TODAY, datetime.fromtimestamp(d.decommissioned_at, UTC).date())
            if d.decommissioned_at
            else TODAY
        )
        out.append((d.id, {g: str(getattr(d, g) or "(none)") for g in ("batch",)}, start, end))
    return [(k, lab, st, max(st, e)) for k, lab, st, e in out]


def _claims(s, mode=None):  # type: ignore[no-untyped-def]
    q = s.query(WarrantyClaim).filter(WarrantyClaim.state != "rejected")
    if mode:
        q = q.filter(WarrantyClaim.failure_mode == mode)
    return [(c.device_key, c.failure_date) for c in q.order_by(WarrantyClaim.failure_date)]


def _old_cells(s, model=None):  # type: ignore[no-untyped-def]
    cells: dict = defaultdict(lambda: [0.0, 0.0])
    by_key = {u[0]: u for u in _units(s, model)}
    for _k, lab, start, end in by_key.values():
        cursor = start
        while cursor < end:
            seg = min(reliability._next_month(cursor), end)
            key = (lab["batch"], reliability._months_between(start, cursor), f"{cursor:%Y-%m}")
            cells[key][0] += (seg - cursor).days / DAYS_PER_MONTH
            cursor = seg
    for key, when in _claims(s):
        u = by_key.get(key)
        if u is None or not u[2] <= when <= u[3]:
            continue
        cell = cells[(u[1]["batch"], reliability._months_between(u[2], when), f"{when:%Y-%m}")]
        if cell[0] == 0:
            cell[0] = 1 / DAYS_PER_MONTH
        cell[1] += 1
    return dict(cells)


def test_cohort_results_equal_the_per_unit_computation(sessions) -> None:  # type: ignore[no-untyped-def]
    _seed(sessions)
    with sessions() as s:
        old = _old_cells(s)
        new = reliability.month_cells(s, TODAY, "batch")
        assert set(new) == set(old)
        for key, (exposure, n) in old.items():
            assert new[key][0] == pytest.approx(exposure, rel=1e-12)
            assert new[key][1] == n

        first: dict[int, date] = {}
        for key, when in _claims(s, "fan"):
            first.setdefault(key, when)
        times, failed = [], []
        for key, _lab, start, end in _units(s, "m-1"):
            when = first.get(key)
            if when is not None and start <= when:
                times.append(max((when - start).days, 0.5))
                failed.append(True)
            elif (end - start).days > 0:
                times.append(float((end - start).days))
                failed.append(False)
        fit = weibull_mle(times, failed).to_dict()
        got = reliability.weibull(s, TODAY, "fan", "m-1")
        assert (got["units"], got["failures"]) == (len(times), sum(failed))
        for name in ("beta", "eta", "b_life", "log_likelihood"):
            assert got["fit"][name] == pytest.approx(fit[name], rel=1e-9), name
        assert len(got["points"]) == got["failures"]
        shared = reliability.cohorts(s, TODAY, None, "m-1")
        assert reliability.weibull(s, TODAY, "fan", "m-1", fleet=shared) == got

        fleet = _units(s)
        keys = {u[0] for u in fleet}

        def op(at: date) -> float:
            return float(sum(max(0, (min(at, e) - st).days) for _k, _l, st, e in fleet))

        growth_times = [
            t for k, w in _claims(s) if k in keys if (t := op(w + timedelta(days=1))) > 0
        ]
        expected = crow_amsaa(growth_times, op(TODAY + timedelta(days=1))).to_dict()
        got_growth = reliability.growth(s, TODAY)
        for name, value in expected.items():
            if isinstance(value, float):
                assert got_growth[name] == pytest.approx(value, rel=1e-9), name

        rates = reliability.claim_rates(s, TODAY, "batch")
        assert {g["group"] for g in rates["groups"]} == {"lot-0", "lot-1", "lot-2", "(none)"}


def test_plotting_positions_are_median_ranks_with_censoring() -> None:
    # No censoring: Bernard's median ranks (i - 0.3) / (n + 0.4).
    got = plotting_positions([5.0, 1.0, 3.0], {})
    assert [p["days"] for p in got] == [1.0, 3.0, 5.0]
    assert [p["F"] for p in got] == pytest.approx([0.7 / 3.4, 1.7 / 3.4, 2.7 / 3.4])
    # Censored units push later failures' adjusted ranks up (Johnson): n = 5,
    # order f(1) c(2) f(3) c(3) f(4): ranks 1, 1 + 5/4 * ... computed by hand.
    got = plotting_positions([1.0, 3.0, 4.0], {2.0: 1, 3.0: 1})
    r1 = 1.0
    r2 = r1 + (5 + 1 - r1) / (1 + 3)
    r3 = r2 + (5 + 1 - r2) / (1 + 1)
    assert [p["F"] for p in got] == pytest.approx([(r - 0.3) / 5.4 for r in (r1, r2, r3)])


def test_weibull_plot_carries_the_failures_on_the_lines_x_axis() -> None:
    fit = {"beta": 2.0, "eta": 100.0, "beta_ci": [1.5, 2.5], "eta_ci": [80.0, 120.0]}
    plot = weibull_plot(fit, data=[{"days": 500.0, "F": 0.9}, {"days": 50.0, "F": 0.2}])
    assert plot is not None
    assert len(plot["x"]) == 42
    assert plot["x"] == sorted(plot["x"])
    i = plot["x"].index(math.log(50.0))
    assert plot["data"][i] == pytest.approx(math.log(-math.log(0.8)))
    assert plot["line"][i] == pytest.approx(2.0 * (math.log(50.0) - math.log(100.0)))
    assert sum(v is not None for v in plot["data"]) == 2
