"""The receding gate of the adaptive fault rule: a burst already on its way back is not
raised (pure, O(1)).

The surprise stage (:mod:`agent.core.adaptive_surprise`) judges the mean of the recent
bounded scores, so a short burst becomes surprising only a few samples after it starts.
On a bursty signal the debounced raise then often comes when the burst has already passed
its peak and is falling back: the departure is ending, not developing, and a fault raised
then is a false alarm that clears an hour later. The rule keeps the **run peak**, the
largest level score of the current run of level scores at or above ``clear_threshold`` on
one side (a sample back inside the clear band, or on the other side, starts a new run;
so does a long gap), and a level departure whose score, and the pending raise's largest
score, are below ``recede_ratio`` (0.6) × that run peak does not count towards a raise.

A departure that is still growing, one that holds its level (a step) or one that is
surprising at or near its peak raises as before; so do records, drift and variance
scores. The run peak is one number of state (signed by its side), part of the snapshot;
a snapshot written before it restores with no run.

:class:`RecedeGate` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`.
"""

from __future__ import annotations

import math

from agent.core.adaptive_surprise import SCORE_STATE_CAP


def check_recede(ratio: float | None) -> None:
    """Raise ``ValueError`` naming ``recede_ratio`` when it is not in (0, 1] (or 0/None)."""
    if ratio and not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(
            f"recede_ratio must be a number between 0 and 1, or 0 or None (off), not {ratio!r}"
        )


class RecedeGate:
    """The run peak and the receding test (see the module docstring)."""

    recede_ratio: float | None
    clear_threshold: float
    _pending_peak: float

    _run_peak: float  # signed: + above the fast level, - below, 0 when no run

    def _track_run(self, z_level: float, side: float) -> None:
        """Learn the sample's level score (``side`` 1 above, -1 below) into the run peak."""
        if z_level < self.clear_threshold:
            self._run_peak = 0.0
            return
        z = min(z_level, SCORE_STATE_CAP)
        if self._run_peak * side > 0:
            z = max(z, abs(self._run_peak))
        self._run_peak = math.copysign(z, side)

    def _receding(self, score: float, kind: str, side: float) -> bool:
        """Whether a level departure on ``side`` has fallen below ``recede_ratio`` × its
        run's peak (its score and the pending raise's largest score both)."""
        if self.recede_ratio is None or kind != "level" or self._run_peak * side <= 0:
            return False
        return max(score, self._pending_peak) < self.recede_ratio * abs(self._run_peak)
