"""Fresh departures inside the refractory period of the adaptive fault rule (pure, O(1)).

After a fault clears, :class:`agent.core.adaptive.AdaptiveRule` raises nothing for
``refractory_s`` (12 h): the aftershocks of a fault (the signal wandering out again while
it settles, a bursty signal's next burst) are the same event, not news. But a fault that
recurs once the signal has been back at normal for a while (a fan that stalls again, a
second traffic jam an hour after the first one cleared) is a new departure, and the
refractory period hid it for half a day.

A **fresh departure** is a run of scores at or above ``clear_threshold`` that begins after
the signal has been **quiet** (every sample scoring below ``clear_threshold``) for at
least ``refractory_quiet_s`` (1.5 h; the clear itself needs ``clear_after_s``, 1 h, of
such samples) and at least 10 sampling intervals, counted up to the last sample seen (a
gap in the samples is not quiet time; after a long gap the quiet is not known), and whose
level score reaches ``refractory_fresh_ratio`` (0.5) × the largest level score of the
fault that last cleared: as large as that fault, not a smaller aftershock. The
refractory period does not hold back the samples of that run (the surprise stage and the
rest of the debounce still judge them, a drift score among them too); once the run ends,
it holds again. An aftershock that follows the clear within the quiet time or stays
small, or a run whose level score never reaches the ratio (drift or variance scores
only: the fast level still dragged by the old fault), is held back as before.

State: three numbers, part of the snapshot (a snapshot from before them restores with no
quiet stretch known and no fault peak, so the refractory period holds as before until the
next fault has cleared): the time of the last sample at or above the clear threshold,
the current run's standing (0 not after a quiet stretch, 1 after one, 2 fresh) and the
largest level score of the current or last fault.

:class:`FreshDeparture` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`.
"""

from __future__ import annotations

import math

from agent.core.adaptive_surprise import SCORE_STATE_CAP

_QUIET_SAMPLES = 10
"""The quiet time is at least this many sampling intervals (a sparse signal's clear, 5
samples, spans more than ``refractory_quiet_s``)."""
RUN_NOT_QUIET = 0
RUN_AFTER_QUIET = 1
RUN_FRESH = 2


def check_fresh(quiet_s: float | None, ratio: float) -> None:
    """Raise ``ValueError`` naming the first invalid fresh-departure parameter."""
    if quiet_s and not (math.isfinite(quiet_s) and quiet_s > 0):
        raise ValueError(
            f"refractory_quiet_s must be a positive number, or 0 or None (off), not {quiet_s!r}"
        )
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"refractory_fresh_ratio must be a non-negative number, not {ratio!r}")


class FreshDeparture:
    """The quiet stretch, the run's standing and the last fault's peak (see the module)."""

    refractory_quiet_s: float | None
    refractory_fresh_ratio: float
    clear_threshold: float
    _active: bool
    _dt_typ: float | None
    _last_clear_ts: float | None
    _last_ts: float | None
    _z_level: float

    _out_ts: float | None  # the last sample scoring at or above the clear threshold
    _fresh_run: int  # RUN_NOT_QUIET, RUN_AFTER_QUIET or RUN_FRESH
    _fault_peak: float  # the largest level score of the current or last fault

    def _reset_fresh(self) -> None:
        self._out_ts = None
        self._fresh_run = RUN_NOT_QUIET
        self._fault_peak = 0.0

    def _track_fresh(self, score: float, kind: str, ts: float) -> None:
        """Learn the sample's score (of ``kind``) into the quiet stretch and the run."""
        if self._active:
            self._fault_peak = max(self._fault_peak, min(self._z_level, SCORE_STATE_CAP))
        if score < self.clear_threshold:
            self._fresh_run = RUN_NOT_QUIET
            return
        if self._out_ts is None or self._out_ts != self._last_ts:
            # A new run (the previous sample scored below the clear threshold). It
            # follows a quiet stretch if the samples stayed below it long enough, counted
            # up to the last of them: a gap after it was not seen quiet. The quiet time
            # is at least _QUIET_SAMPLES sampling intervals, so on a sparse signal, whose
            # clear alone spans the quiet time, the first departure after the clear is
            # still an aftershock.
            quiet = self.refractory_quiet_s
            after_quiet = (
                quiet is not None
                and self._out_ts is not None
                and self._last_ts is not None
                and self._fault_peak > 0.0  # the size test needs the last fault's peak
                and self._last_ts - self._out_ts
                >= max(quiet, _QUIET_SAMPLES * (self._dt_typ or 0.0))
            )
            self._fresh_run = RUN_AFTER_QUIET if after_quiet else RUN_NOT_QUIET
        if (
            self._fresh_run == RUN_AFTER_QUIET
            and kind == "level"
            and score >= self.refractory_fresh_ratio * self._fault_peak
        ):
            self._fresh_run = RUN_FRESH
        self._out_ts = ts

    def _forget_quiet(self) -> None:
        """After a long gap: how long the signal was quiet is not known."""
        self._out_ts = None
        self._fresh_run = RUN_NOT_QUIET

    def _in_refractory(self, ts: float, refractory_s: float) -> bool:
        """Whether a raise at ``ts`` is held back by the refractory period after a clear
        (not for the samples of a fresh departure)."""
        if self._last_clear_ts is None or ts - self._last_clear_ts >= refractory_s:
            return False
        return self._fresh_run != RUN_FRESH

    def _fault_raised(self) -> None:
        """A fault was raised: its peak starts at the sample's level score (a drift or
        variance raise's score says nothing of how far a recurrence must go)."""
        self._fault_peak = min(self._z_level, SCORE_STATE_CAP)
