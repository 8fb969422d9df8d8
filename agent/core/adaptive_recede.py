"""The receding gate of the adaptive fault rule: a burst already on its way back is not
raised (pure, O(1)).

The surprise stage (:mod:`agent.core.adaptive_surprise`) judges the mean of the recent
bounded scores, so a short burst becomes surprising only a few samples after it starts.
On a bursty signal the debounced raise then often comes when the burst has already passed
its peak and is falling back: the departure is ending, not developing, and a fault raised
then is a false alarm that clears an hour later. The rule keeps the **run peak**, the
largest level score of the current run of level scores at or above ``clear_threshold`` on
one side (a sample back inside the clear band, or on the other side, starts a new run;
so does a long gap), and a level departure whose score, and the largest score of a
pending raise on its side, are below ``recede_ratio`` (0.6) × that run peak does not count
towards a raise. Only with the surprise stage on, and only early in a run and while the
drift score can back it up: for at most two surprise windows of the run (a burst ends
within them; a run that outlasts them is a lasting departure), and not while the drift
score is not judged (the rule's first ``drift_warmup_s``, the warm-up after a long gap).

A departure that is still growing, one that holds its level or one that is surprising at
or near its peak raises as before; so do records, drift and variance scores. The cost: a
step whose first sample overshoots (25 SDs, then a new level at 12) on a signal whose
routine bursts make the 25 no record is raised by its drift score, later than without
the gate (on 5-minute samples about 0.8 to 1.8 h against 0.2 to 0.3 h; 2.5 h against
0.75 h on 15-minute samples); set ``recede_ratio = 0`` where that matters more than
bursts raised as faults. The run is two numbers of state (its peak, signed by its side,
and its length), part of the snapshot; a snapshot written before them restores with no
run (one with the peak but not the length, as a run just begun).

:class:`RecedeGate` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

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
    _pending_side: float

    _run_peak: float  # signed: + above the fast level, - below, 0 when no run
    _run_n: float  # samples in the run so far (a whole number)

    if TYPE_CHECKING:  # provided by SurpriseScore and AdaptiveBaseline

        def _surprise_window(self) -> float: ...

        def _drift_judged(self, ts: float) -> bool: ...

    def _track_run(self, z_level: float, side: float) -> None:
        """Learn the sample's level score (``side`` 1 above, -1 below) into the run peak."""
        if z_level < self.clear_threshold:
            self._run_peak, self._run_n = 0.0, 0.0
            return
        z = min(z_level, SCORE_STATE_CAP)
        if self._run_peak * side > 0:
            z = max(z, abs(self._run_peak))
            self._run_n += 1.0
        else:
            self._run_n = 1.0
        self._run_peak = math.copysign(z, side)

    def _receding(self, score: float, kind: str, side: float, ts: float) -> bool:
        """Whether a level departure on ``side`` has fallen below ``recede_ratio`` × its
        run's peak (its score and the same side's pending largest score both), early in
        its run (within two surprise windows of samples: a burst ends within them, a run
        that outlasts them is a lasting departure) and while the drift score is
        judged (it is what catches a step whose first sample overshot: not in the rule's
        first ``drift_warmup_s``, nor after a long gap until the warm-up is over)."""
        if self.recede_ratio is None or kind != "level" or self._run_peak * side <= 0:
            return False
        if self._run_n > 2 * self._surprise_window():
            return False
        if not self._drift_judged(ts):
            return False
        pending = self._pending_peak if self._pending_side == side else 0.0
        return max(score, pending) < self.recede_ratio * abs(self._run_peak)
