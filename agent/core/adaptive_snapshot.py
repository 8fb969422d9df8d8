"""Snapshots of the adaptive fault rule's learned state: their fields and their validation.

:meth:`agent.core.adaptive.AdaptiveRule.snapshot` stores :data:`FLOAT_STATE`,
:data:`INT_STATE`, the daily profile and two flags as a small JSON-serialisable dict
(version :data:`SNAPSHOT_VERSION`); :func:`parse_snapshot` checks one before it is
restored, so corrupt or foreign state is ignored instead of poisoning the rule.
"""

from __future__ import annotations

import math
from typing import Any

from agent.core.adaptive_recurrence import RECURRENCE_BINS
from agent.core.adaptive_surprise import SCORE_STATE_CAP, TAIL_CAP, cap_score

SNAPSHOT_VERSION = 1
_MAX_STATE = 1e18
"""A restored number beyond this cannot come from valid samples: the state is corrupt."""

# Learned state kept in snapshots: numbers (None until known) and counters.
_LATER_STATE: tuple[str, ...] = (
    "u_short",
    "u_mean",
    "u_var",
    "peak",
    "peak_ts",
    "gap_ts",
    "stable_since",
    "s_v",
    "s_vl",
    "tail",
    "tail_ts",
    "pending_peak",
    "pending_side",
    "pending_drift",
    "last_drift",
    "run_peak",
    "run_n",
    "out_ts",
    "fault_peak",
)
FLOAT_STATE: tuple[str, ...] = (
    "last_ts",
    "last_x",
    "dt_typ",
    "reset_ts",
    "start_ts",
    "m_f",
    "s_f",
    "m_s",
    "s_d",
    "resolution",
    "pending_since",
    "clear_since",
    "last_clear_ts",
    *_LATER_STATE,
)
INT_STATE: tuple[str, ...] = ("n", "n_all", "pending_n", "clear_n", "u_n", "fresh_run")
LIST_STATE: tuple[str, ...] = ("rec_day1", "rec_day2", "rec_cur", "rec_seen")
"""The recurrence memory (:mod:`agent.core.adaptive_recurrence`): lists, or None when off;
a snapshot without them (written before they existed) starts them anew."""
OPTIONAL_STATE = frozenset({*_LATER_STATE, "u_n", "fresh_run"})
"""Added after version 1 snapshots were written: a snapshot without them starts them anew."""


def _parse_floats(value: Any, length: int | None) -> list[float] | bool | None:
    """A list of ``length`` finite floats (None when no list is expected); False if invalid."""
    if length is None:
        return None if value is None else False
    if not isinstance(value, list) or len(value) != length:
        return False
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return False
        if not math.isfinite(item) or abs(item) > _MAX_STATE:
            return False
        out.append(float(item))
    return out


def parse_snapshot(
    state: Any, signal: str, season_bins: int | None, recurrence: bool = False
) -> dict[str, Any] | None:
    """Validate a snapshot; None when anything is missing, mistyped or not finite.

    ``recurrence``: whether the rule keeps a recurrence memory (its lists are then parsed,
    or left out of the result when the snapshot predates them)."""
    if not isinstance(state, dict) or state.get("v") != SNAPSHOT_VERSION:
        return None
    if state.get("signal") != signal:
        return None
    parsed: dict[str, Any] = {}
    for name in ("active", "gap_check"):
        if not isinstance(state.get(name), bool):
            return None
        parsed[name] = state[name]
    for name in FLOAT_STATE:
        value = state.get(name)
        if value is None:
            parsed[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or abs(value) > _MAX_STATE:
            return None
        parsed[name] = float(value)
    for name in INT_STATE:
        value = state.get(name, 0 if name in OPTIONAL_STATE else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        parsed[name] = value
    for name in ("dt_typ", "s_f", "s_d", "resolution", "s_v", "s_vl"):
        if parsed[name] is not None and parsed[name] < 0:
            return None
    if parsed["n"] > 0 and (parsed["m_f"] is None or parsed["reset_ts"] is None):
        return None
    if parsed["n_all"] > 0 and (parsed["m_s"] is None or parsed["start_ts"] is None):
        return None
    if parsed["m_f"] is not None and (
        parsed["m_s"] is None or parsed["n"] == 0 or parsed["start_ts"] is None
    ):
        return None
    if (parsed["pending_n"] > 0) != (parsed["pending_since"] is not None):
        return None
    for name in ("pending_peak", "pending_side", "pending_drift"):
        # From before them, or with nothing pending: a pending raise gets no follow bar
        # (from before the rise gate: its drift score counted from 0 before it opened).
        if parsed[name] is None or parsed["pending_n"] == 0:
            parsed[name] = 0.0
    for name in ("pending_drift", "last_drift"):  # kept up to the score cap, as written
        value = parsed[name] or 0.0
        parsed[name] = cap_score(value)
    if parsed["pending_peak"] < 0 or parsed["pending_side"] not in (-1.0, 0.0, 1.0, 2.0):
        return None
    if parsed["run_peak"] is None:  # from before the receding gate: no run
        if parsed["run_n"] is not None:
            return None  # a run length without a run: not a state the rule writes
        parsed["run_peak"], parsed["run_n"] = 0.0, 0.0
    if parsed["run_n"] is None:  # from before the run length: a run just begun
        parsed["run_n"] = 1.0 if parsed["run_peak"] else 0.0
    # Kept up to the score cap: a larger value decides nothing differently.
    parsed["run_peak"] = cap_score(parsed["run_peak"])
    if parsed["run_n"] < 0 or not float(parsed["run_n"]).is_integer():
        return None
    if (parsed["run_peak"] == 0.0) != (parsed["run_n"] == 0.0):
        return None
    # The fresh-departure state (agent.core.adaptive_fresh); from before it: no quiet
    # stretch known and no fault peak, so the refractory period holds as it did.
    if parsed["fault_peak"] is None:
        parsed["fault_peak"] = 0.0
    parsed["fault_peak"] = min(parsed["fault_peak"], SCORE_STATE_CAP)
    if parsed["fault_peak"] < 0 or parsed["fresh_run"] > 2:
        return None
    if parsed["fresh_run"] > 0 and parsed["out_ts"] is None:
        return None  # a run without its last sample: not a state the rule writes
    if parsed["out_ts"] is not None and (
        parsed["last_ts"] is None or parsed["out_ts"] > parsed["last_ts"]
    ):
        return None
    if (parsed["clear_n"] > 0) != (parsed["clear_since"] is not None):
        return None
    surprise = [parsed[name] for name in ("u_short", "u_mean", "u_var")]
    if (parsed["u_n"] > 0) != all(v is not None for v in surprise) or (
        parsed["u_n"] == 0 and any(v is not None for v in surprise)
    ):
        return None
    if parsed["u_var"] is not None and parsed["u_var"] < 0:
        return None
    if (parsed["peak"] is None) != (parsed["peak_ts"] is None) or (parsed["peak"] or 0) < 0:
        return None
    if parsed["tail"] is None:  # a snapshot from before the tail: it starts neutral
        if parsed["tail_ts"] is not None:
            return None
        parsed["tail"] = 1.0
    if not 1.0 <= parsed["tail"] <= TAIL_CAP or (
        parsed["tail_ts"] is None and parsed["tail"] != 1.0
    ):
        return None
    for name in ("season_bins", "season_visits"):
        values = _parse_floats(state.get(name), season_bins)
        if values is False:
            return None
        parsed[name] = values
    if parsed["season_visits"] is not None and min(parsed["season_visits"]) < 0:
        return None
    if recurrence and all(state.get(name) is not None for name in LIST_STATE):
        for name in LIST_STATE:
            values = _parse_floats(state[name], RECURRENCE_BINS)
            if not isinstance(values, list) or (name != "rec_seen" and min(values) < 0):
                return None
            parsed[name] = values
    elif recurrence and any(state.get(name) is not None for name in LIST_STATE):
        return None
    return parsed
