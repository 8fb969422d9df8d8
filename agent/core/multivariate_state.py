"""The learned state of the multivariate fault rule, its snapshot form and its validation.

:class:`MultivariateState` holds what :class:`agent.core.multivariate.MultivariateRule`
learns (smoothed vector, mean, covariance, sampling interval, counters). A snapshot is a
small JSON-serialisable dict (version :data:`SNAPSHOT_VERSION`, the covariance as its
lower triangle); :func:`parse_state` checks one completely before it is restored, so a
corrupt or foreign state file is ignored instead of poisoning the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SNAPSHOT_VERSION = 1
_MAX_STATE = 1e30
"""A restored number beyond this cannot come from valid samples: the state is corrupt."""


@dataclass(slots=True)
class MultivariateState:
    """Learned state of one group of k signals (lists of floats, None until known)."""

    smooth: list[float] | None
    mean: list[float] | None
    cov: list[list[float]]
    last_ts: float | None = None
    dt_typ: float | None = None
    last_clear_ts: float | None = None
    n_learned: int = 0
    n_since_reset: int = 0

    @classmethod
    def empty(cls, k: int) -> MultivariateState:
        """Nothing learned yet."""
        return cls(smooth=None, mean=None, cov=[[0.0] * k for _ in range(k)])

    def as_dict(self, signals: Sequence[str]) -> dict[str, Any]:
        """The snapshot fields (the covariance as its lower triangle, row by row)."""
        return {
            "v": SNAPSHOT_VERSION,
            "signals": list(signals),
            "smooth": None if self.smooth is None else list(self.smooth),
            "mean": None if self.mean is None else list(self.mean),
            "cov": [v for i, row in enumerate(self.cov) for v in row[: i + 1]],
            "last_ts": self.last_ts,
            "dt_typ": self.dt_typ,
            "last_clear_ts": self.last_clear_ts,
            "n_learned": self.n_learned,
            "n_since_reset": self.n_since_reset,
        }


def _number(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and abs(value) <= _MAX_STATE
    )


def _vector(value: Any, length: int) -> list[float] | bool | None:
    """A list of ``length`` finite numbers, None for null; False when invalid."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != length or not all(map(_number, value)):
        return False
    return [float(v) for v in value]


def _debounce_ok(state: dict[str, Any]) -> bool:
    streak, since = state.get("streak"), state.get("since")
    if not isinstance(state.get("active"), bool):
        return False
    if isinstance(streak, bool) or not isinstance(streak, int) or streak < 0:
        return False
    return (since is None and streak == 0) or (_number(since) and streak > 0)


def parse_state(state: Any, signals: Sequence[str]) -> MultivariateState | None:
    """Validate a snapshot for ``signals``; None when anything is missing, mistyped or odd."""
    if not isinstance(state, dict) or state.get("v") != SNAPSHOT_VERSION:
        return None
    if state.get("signals") != list(signals) or not _debounce_ok(state):
        return None
    k = len(signals)
    smooth = _vector(state.get("smooth"), k)
    mean = _vector(state.get("mean"), k)
    tri = _vector(state.get("cov"), k * (k + 1) // 2)
    if smooth is False or mean is False or not isinstance(tri, list):
        return None
    assert not isinstance(smooth, bool)
    assert not isinstance(mean, bool)
    floats = {}
    for name in ("last_ts", "dt_typ", "last_clear_ts"):
        value = state.get(name)
        if value is not None and not _number(value):
            return None
        floats[name] = None if value is None else float(value)
    counts = {}
    for name in ("n_learned", "n_since_reset"):
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        counts[name] = value
    if floats["dt_typ"] is not None and floats["dt_typ"] <= 0:
        return None
    started = smooth is not None or counts["n_learned"] > 0
    if started and (mean is None or floats["last_ts"] is None):
        return None
    cov = [[0.0] * k for _ in range(k)]
    pos = 0
    for i in range(k):
        for j in range(i + 1):
            cov[i][j] = cov[j][i] = tri[pos]
            pos += 1
        if cov[i][i] < 0:
            return None
    return MultivariateState(
        smooth=smooth,
        mean=mean,
        cov=cov,
        last_ts=floats["last_ts"],
        dt_typ=floats["dt_typ"],
        last_clear_ts=floats["last_clear_ts"],
        n_learned=counts["n_learned"],
        n_since_reset=counts["n_since_reset"],
    )
