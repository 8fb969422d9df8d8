"""Pure recall, warranty and RMA logic: lifecycles, scope predicates, rates, checks."""

from __future__ import annotations

from datetime import date

import pytest

from fleet_server.domain.lifecycles import (
    CAMPAIGN,
    CLAIM,
    RECALL_DEVICE,
    RMA,
    IllegalTransitionError,
)
from fleet_server.domain.part_reliability import compare_rates
from fleet_server.domain.recall_progress import Completion, is_unreachable, version_at_least
from fleet_server.domain.recall_scope import ScopeError, explain, parse_scope
from fleet_server.domain.warranty_checks import Coverage, DeviceFacts, add_months, check_claim


def test_rma_happy_path_and_illegal_moves_name_the_allowed_ones() -> None:
    state = RMA.initial
    for nxt in ("approved", "returned", "inspected", "refurbished"):
        state = RMA.check(state, nxt)
    assert RMA.is_final(state)
    with pytest.raises(IllegalTransitionError) as err:
        RMA.check("claimed", "returned")
    assert err.value.allowed == ("approved", "rejected")
    assert "allowed: approved, rejected" in str(err.value)
    with pytest.raises(IllegalTransitionError, match="none \\(final state\\)"):
        RMA.check("scrapped", "refurbished")


def test_campaign_device_and_claim_lifecycles() -> None:
    assert CAMPAIGN.check("draft", "open") == "open"
    with pytest.raises(IllegalTransitionError):
        CAMPAIGN.check("closed", "open")
    assert RECALL_DEVICE.check("unreachable", "notified") == "notified"
    with pytest.raises(IllegalTransitionError):
        RECALL_DEVICE.check("remedied", "notified")
    with pytest.raises(IllegalTransitionError):
        CLAIM.check("approved", "rejected")


DEV = {
    "model": "thermo-1",
    "hw_revision": "rev-a",
    "batch": "lot-7",
    "serial": "SN0150",
    "production_date": "2026-01-15",
    "software_version": "2.0.0",
}


def test_scope_matches_and_explains_each_clause() -> None:
    scope = parse_scope(
        {
            "models": ["thermo-1"],
            "batches": ["lot-7", "lot-8"],
            "serial_range": {"from": "SN99", "to": "SN0200"},
            "production_window": {"from": "2026-01-01", "to": "2026-01-31"},
        }
    )
    ok, matched, failed = explain(scope, DEV)
    assert ok
    assert not failed
    assert "batch lot-7 in [lot-7, lot-8]" in matched
    assert any(m.startswith("serial SN0150 in") for m in matched)  # natural order: 99 < 150
    ok, _m, failed = explain(scope, {**DEV, "production_date": "2026-02-01"})
    assert not ok
    assert failed == ["production_date 2026-02-01 not in [2026-01-01, 2026-01-31]"]


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ({}, "at least one clause"),
        ({"modelz": ["x"]}, "unknown clause"),
        ({"models": []}, "scope.models"),
        ({"serial_range": {"from": "SN9", "to": "SN1"}}, "after"),
        ({"production_window": {"from": "2026-13-01"}}, "not a date"),
        ([], "object"),
    ],
)
def test_bad_scopes_are_rejected_with_the_clause_named(scope, message) -> None:
    with pytest.raises(ScopeError, match=message):
        parse_scope(scope)


def test_completion_rates_raw_and_adjusted() -> None:
    c = Completion(population=10, remedied=4, not_needed=1, unreachable=5)
    assert c.raw_rate == 0.5
    assert c.adjusted_rate == 1.0
    assert Completion(2, 0, 0, 2).adjusted_rate is None
    assert Completion(0, 0, 0, 0).raw_rate == 0.0


def test_unreachable_rule_and_version_order() -> None:
    now = 100 * 86400.0
    assert is_unreachable("scrapped", "online", now, now, 30) == "registry status scrapped"
    assert is_unreachable("active", "offline", now - 31 * 86400, now, 30)
    assert is_unreachable("active", "offline", now - 2 * 86400, now, 30) is None
    assert is_unreachable("active", "online", None, now, 30) is None
    assert version_at_least("2.10.0", "2.9.1")
    assert not version_at_least("2.0.0", "2.0.1")
    assert not version_at_least(None, "1")
    assert version_at_least("weird", "weird")
    assert not version_at_least("weird", "other")


FACTS = DeviceFacts("pi-1", "thermo-1", "eu", "active", date(2025, 1, 31), None)
COVER = Coverage("thermo-1", "*", 13, ("fan_failure",))


def test_claim_checks_pass_and_fail_with_reasons() -> None:
    ok = check_claim(
        device_ref="pi-1",
        device=FACTS,
        coverage=COVER,
        failure_date=date(2026, 2, 27),
        failure_mode="fan_failure",
        part_kind=None,
        alarm_count=2,
        evidence_days=14,
        today=date(2026, 3, 1),
    )
    assert all(r.passed for r in ok), ok
    late = check_claim(
        device_ref="pi-1",
        device=FACTS,
        coverage=COVER,
        failure_date=date(2026, 3, 1),
        failure_mode="psu",
        part_kind=None,
        alarm_count=0,
        evidence_days=14,
        today=date(2026, 3, 2),
    )
    failed = {r.name: r.detail for r in late if not r.passed}
    assert set(failed) == {"in_coverage", "failure_covered", "telemetry_evidence"}
    assert "end 2026-02-28" in failed["in_coverage"]
    unknown = check_claim(
        device_ref="nope",
        device=None,
        coverage=None,
        failure_date=date(2026, 1, 1),
        failure_mode="x",
        part_kind=None,
        alarm_count=0,
        evidence_days=14,
        today=date(2026, 1, 2),
    )
    assert unknown[0].name == "device_exists"
    assert not unknown[0].passed
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)


def test_part_rates_compare_refurbished_with_new() -> None:
    out = compare_rates(
        {
            "new": {"failures": 2, "hours": 10000.0, "installations": 10},
            "refurbished": {"failures": 6, "hours": 5000.0, "installations": 5},
        }
    )
    assert out["by_condition"]["new"]["rate_per_1000h"] == pytest.approx(0.2)
    assert out["by_condition"]["refurbished"]["rate_per_1000h"] == pytest.approx(1.2)
    ratio = out["ratio"]
    assert ratio["refurbished_over_new"] == pytest.approx(6.0)
    lo, hi = ratio["ci95"]
    assert lo < 6.0 < hi
