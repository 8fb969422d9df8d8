"""The pure decisions of deployments: compatibility, timeouts per phase, state mapping."""

from __future__ import annotations

import pytest

import protocol as p
from fleet_server.domain.deployment_rules import (
    DEFAULT_TIMEOUTS,
    check_timeouts,
    compatibility_problem,
    moves_phase,
    next_status,
    silence_verdict,
)
from fleet_server.errors import InvalidInputError


def test_compatibility_names_what_does_not_match() -> None:
    assert compatibility_problem("gw-100", "rev-a", "gw-100", ["rev-a", "rev-b"]) is None
    model = compatibility_problem("gw-200", "rev-a", "gw-100", ["rev-a"])
    assert model is not None
    assert "gw-100" in model
    hw = compatibility_problem("gw-100", "rev-z", "gw-100", ["rev-a", "rev-b"])
    assert hw is not None
    assert "rev-a, rev-b" in hw
    assert compatibility_problem(None, None, "gw-100", ["rev-a"]) is not None


def test_timeouts_overlay_defaults_and_refuse_bad_values() -> None:
    assert check_timeouts(None) == DEFAULT_TIMEOUTS
    merged = check_timeouts({"download_s": 60}, {**DEFAULT_TIMEOUTS, "accept_s": 5.0})
    assert (merged["download_s"], merged["accept_s"]) == (60.0, 5.0)
    for bad in ({"download_s": 0}, {"download_s": -3}, {"download_s": True}, {"x_s": 1}):
        with pytest.raises(InvalidInputError) as err:
            check_timeouts(bad)
        assert err.value.code == "invalid_timeouts"
        assert next(iter(bad)) in err.value.message


@pytest.mark.parametrize(
    ("phase", "key"),
    [
        ("sent", "accept_s"),
        ("downloading", "download_s"),
        ("verified", "download_s"),
        ("installing", "install_s"),
        ("installed", "install_s"),
        ("rebooting", "reboot_s"),
        ("trial", "commit_s"),
    ],
)
def test_each_phase_has_its_own_limit(phase: str, key: str) -> None:
    limits = {k: 1000.0 for k in DEFAULT_TIMEOUTS} | {key: 10.0}
    assert silence_verdict(phase, 100.0, limits, now=110.0) is None
    reason = silence_verdict(phase, 100.0, limits, now=111.0)
    assert reason is not None
    assert f"phase {phase}" in reason
    assert key in reason
    assert "11 s" in reason


def test_terminal_and_pending_phases_never_time_out() -> None:
    for phase in ("pending", "committed", "failed", "rolled_back"):
        assert silence_verdict(phase, 0.0, DEFAULT_TIMEOUTS, now=1e9) is None


def test_only_committed_is_success() -> None:
    assert next_status(p.UpdateState.COMMITTED) == "committed"
    assert next_status(p.UpdateState.FAILED) == "failed"
    assert next_status(p.UpdateState.ROLLED_BACK) == "failed"
    for state in ("downloading", "verified", "installing", "installed", "rebooting", "trial"):
        assert next_status(p.UpdateState(state)) == "in_progress"


def test_out_of_order_reports_do_not_step_back() -> None:
    assert moves_phase("sent", "downloading")
    assert moves_phase("installing", "trial")
    assert not moves_phase("trial", "downloading")
    assert not moves_phase("rebooting", "installed")
