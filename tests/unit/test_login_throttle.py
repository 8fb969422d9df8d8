"""The sign-in throttle's pure decision: per account, per address, and when it lifts."""

from __future__ import annotations

from fleet_server.domain.login_throttle import ThrottlePolicy, refusal

POLICY = ThrottlePolicy(account_limit=3, address_limit=5, window_s=600)


def test_under_the_limits_signs_in() -> None:
    assert refusal([100, 200], [100, 200, 300, 400], 500, POLICY) is None


def test_account_limit_refuses_until_the_oldest_counted_failure_leaves() -> None:
    got = refusal([100, 200, 300], [], 400, POLICY)
    assert got is not None
    assert got.scope == "account"
    assert got.retry_after_s == 300  # 100 + 600 - 400
    assert "this account" in got.message
    assert "5 minutes" in got.message
    assert refusal([100, 200, 300], [], 700, POLICY) is None


def test_address_limit_names_the_address() -> None:
    got = refusal([], [10, 20, 30, 40, 50], 60, POLICY)
    assert got is not None
    assert got.scope == "address"
    assert "your address" in got.message


def test_old_failures_do_not_count() -> None:
    assert refusal([0, 1, 2, 700], [], 800, POLICY) is None
