"""Departures that recur at the same time of day are not news (pure, O(1) per sample).

The daily profile of :mod:`agent.core.adaptive_baseline` learns a signal's average shape
over the day, but with a few dozen bins it cannot follow a sharp daily feature (a peak
that lasts a few minutes, a nightly batch job's spike): the residual left at that moment
of the day is the same every day, and once the noise scale has learned the quiet rest of
the day it scores as a large departure, day after day.

The **recurrence memory** keeps, for each of ``RECURRENCE_BINS`` slots of the seasonal
period (one hour each for a day), the largest level score seen in that slot on each of the
two previous days. A level departure (not a record, not a drift) is not raised while its
score is below ``recurrence_ratio`` (1.2) × the smaller of those two peaks: the signal did
as much at this time of day on both of the last two days, so it is how this signal
behaves, not a fault. While a departure is excused that way the fast level learns from it
at ``anomaly_learning_weight`` only, as from a pending raise, so a daily spike does not
drag the level (and then raise the drift score). A departure at a new time of day, one
clearly larger than on both previous days, or one seen on one day only (a fault that
began yesterday at this time) is judged as before; records are never excused. An
excused departure does not teach the record tail (:mod:`agent.core.adaptive_surprise`),
and a level record must be ``record_ratio`` × the larger of its slot's peaks on the last
two days it was watched (:meth:`RecurrenceMemory._beyond_slot`; these are not forgotten
over a gap, as the tail never learned them): on NAB a server's nightly spikes of about
45 SDs had taught the tail to ignore a first spike of 75 SDs at a new hour. The
memory learns from the current day's scores only (a slot's scores become "yesterday" when
the slot is next visited at least half a period later), so a departure never excuses
itself; a slot not visited for over two and a half periods forgets.

Tried on NAB and not taken: the largest score of the slot and its two neighbours over the
last week, or on either of the last two days (traffic series' congestions come at the
same hours day after day and were excused: realTraffic 68.9 → 48.8).

:class:`RecurrenceMemory` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`; its
``4 × RECURRENCE_BINS`` numbers are part of the rule's snapshot (off without a seasonal
period, or with ``recurrence_ratio`` 0 or None).
"""

from __future__ import annotations

import math

from agent.core.adaptive_surprise import SCORE_STATE_CAP

RECURRENCE_BINS = 24
"""Slots of the seasonal period (hours of a day)."""


def check_recurrence(ratio: float | None) -> None:
    """Raise ``ValueError`` when ``recurrence_ratio`` is invalid."""
    if ratio is not None and not (math.isfinite(ratio) and (ratio == 0 or ratio >= 1)):
        raise ValueError("recurrence_ratio must be a number >= 1, or 0 or None (off)")


class RecurrenceMemory:
    """Per time-of-day slot, the level scores of the two previous days (see the module)."""

    seasonal_period_s: float | None
    recurrence_ratio: float | None

    def _reset_recurrence(self) -> None:
        on = self.recurrence_ratio is not None and self.seasonal_period_s is not None
        self._rec_day1: list[float] | None = [0.0] * RECURRENCE_BINS if on else None
        self._rec_day2: list[float] | None = [0.0] * RECURRENCE_BINS if on else None
        self._rec_cur: list[float] | None = [0.0] * RECURRENCE_BINS if on else None
        self._rec_seen: list[float] | None = [0.0] * RECURRENCE_BINS if on else None

    def _rec_slot(self, ts: float) -> int:
        assert self.seasonal_period_s is not None
        phase = (ts % self.seasonal_period_s) / self.seasonal_period_s
        return min(int(phase * RECURRENCE_BINS), RECURRENCE_BINS - 1)

    def _rec_days(self, slot: int, ts: float, *, forget: bool = True) -> tuple[float, float]:
        """The peak scores of ``slot`` on the two previous days, as seen from ``ts`` (a day
        without samples counts as 0); with ``forget`` False, on the last two days the slot
        was watched, however long ago."""
        day1, day2, cur, seen = self._rec_day1, self._rec_day2, self._rec_cur, self._rec_seen
        assert day1 is not None
        assert day2 is not None
        assert cur is not None
        assert seen is not None
        assert self.seasonal_period_s is not None
        elapsed = ts - seen[slot]
        period = self.seasonal_period_s
        if elapsed < period / 2:
            return day1[slot], day2[slot]  # visited today already: cur is today's
        if elapsed < 1.5 * period or not forget:
            return cur[slot], day1[slot]  # last visited yesterday
        if elapsed < 2.5 * period:
            return 0.0, cur[slot]  # skipped a day
        return 0.0, 0.0

    def _recurring(self, score: float, ts: float) -> bool:
        """Whether a level ``score`` at ``ts`` is below ``recurrence_ratio`` × what this
        time of day showed on each of the two previous days (the smaller peak)."""
        if self._rec_day1 is None or self.recurrence_ratio is None:
            return False
        peak = min(self._rec_days(self._rec_slot(ts), ts))
        return score < self.recurrence_ratio * peak

    def _beyond_slot(self, score: float, ts: float, ratio: float) -> bool:
        """Whether a level ``score`` at ``ts`` is at least ``ratio`` × the larger of its
        slot's peaks on the last two days the slot was watched (True when the memory is
        off). The record stage asks this, as the record tail does not learn excused
        departures. Unlike the excuse, this does not forget over a gap: after a device was
        off for days, the record tail has still not learned its nightly spike, so the first
        one back would otherwise be a record."""
        if self._rec_day1 is None or self.recurrence_ratio is None:
            return True
        return score >= ratio * max(self._rec_days(self._rec_slot(ts), ts, forget=False))

    def _learn_recurrence(self, score: float, ts: float) -> None:
        """Learn a level score into its slot (rolling the slot over on a new day)."""
        day1, day2, cur, seen = self._rec_day1, self._rec_day2, self._rec_cur, self._rec_seen
        if day1 is None or day2 is None or cur is None or seen is None:
            return
        slot = self._rec_slot(ts)
        period = self.seasonal_period_s or 0.0
        if ts - seen[slot] >= 2.5 * period:
            # Back after days unwatched: nothing to excuse (yesterday is 0), but the last
            # day watched still guards records (see _beyond_slot) until the next day.
            day1[slot], day2[slot] = 0.0, max(cur[slot], day1[slot])
            cur[slot] = 0.0
        elif ts - seen[slot] >= period / 2:
            day1[slot], day2[slot] = self._rec_days(slot, ts)
            cur[slot] = 0.0
        cur[slot] = min(max(cur[slot], score), SCORE_STATE_CAP)
        seen[slot] = ts
