"""How surprising a signal's recent anomaly scores are, given its own history (pure, O(1)).

Recorded signals differ in how often they stray: a clean sensor's robust score is rarely
above 3, a bursty count's often above 8. A fixed threshold on the score is then either
deaf on the first or cries wolf on the second. Like the anomaly likelihood of Numenta's HTM
detector, the *surprise* judges the recent scores against this signal's own long-run
distribution of scores:

* each score is bounded, ``u = min(score, surprise_cap) / surprise_cap`` (one huge outlier
  counts as much as a merely large one);
* ``u_short``: the mean of ``u`` over about ``surprise_window_samples`` recent samples (an
  exponentially weighted mean): a lasting departure weighs more than a lone spike. On a
  sparse signal the window is shortened to cover about ``surprise_window_s`` seconds of
  typical sampling intervals, but never fewer than ``_MIN_WINDOW`` samples: ten hourly
  samples would make a departure wait half a day to be judged, while ten one-second samples
  are still a short look;
* ``u_mean``, ``u_var``: the long-run mean and variance of ``u`` over about
  ``surprise_memory_samples`` samples (plain averages while fewer have been seen);
* ``surprise = (u_short - u_mean) / sd(u)``, in standard deviations of the signal's own
  score. It is ``None`` for the first five windows of scored samples.

A surprising sample counts towards a raise when its score is at least the kind's minimum,
or the **follow bar** (:meth:`SurpriseScore._least_score`) when it continues, on the same
side, a pending raise that has seen a surprising score of ``surprise_strong_score``. A
drift score follows only through the **rise gate** (:meth:`SurpriseScore._drift_rose`):
it must have risen, since the sample before the raise opened, by ``surprise_follow_rise``
× the most one sample can move it, else a drift that was already wandering when a spike
came would raise on the spike's next ordinary sample.

The surprise judges lasting departures; a lone sample far outside anything this signal has
done (a spike, a crash to zero) is judged by its **record** instead: ``peak`` is the largest
robust score seen, decaying with time constant ``record_tau_s`` (held undecayed until
records are judged, so a spike of the first day is not forgotten before judging starts;
over at least a week during the rule's first week while the tail is on).
A score at or above ``record_threshold`` that is also at least ``record_ratio`` × ``peak``
(and ``record_tail_ratio`` × the tail, below) is a record: a departure this signal has not
shown for days, which the rule raises at once (no debounce).
A bursty signal whose spikes are routine keeps a high peak, so its routine spikes are not
records. Records are judged only once the signal has been scored for ``drift_warmup_s``.

The peak forgets within days, so a signal whose large scores are routine but come days
apart would see each as a record. The **tail** guards against that: a level the signal's
scores reach about as often as its routine large events, learned *per unit of time*, not
per sample, so it means the same at 1 s, 10 s, 5 min or 1 h sampling. It starts at 1
(neutral), decays towards 1 with time constant ``record_tail_tau_s`` (30 days), and a
score above it pulls it up by ``_TAIL_STEP`` of the way in log space, the score winsorised
at ``record_tail_ratio`` × the tail (so a record teaches at most that much, and a first
score cannot block records for weeks). A rise counts in full only ``_TAIL_HOLD_S`` (1 h)
after the previous one, and in proportion to the time since before that: the many samples
of one event at a fast sampling interval count as about one event, as the single sample
of it does at an hourly interval. It does not learn while a fault is raised, nor from a
departure the recurrence memory excuses (:mod:`agent.core.adaptive_recurrence`: its time
of day did as much on each of the two previous days), so a nightly batch job's spike does
not teach the tail to ignore a first spike at a new hour; the rule then also requires a
level record to be ``record_ratio`` × the larger of its hour's two previous-day peaks, so
that a daily spike which grows a little is still not a record. A record
must also be at least ``record_tail_ratio`` (3) × the tail. The decay is evaluated from the
time of the last rise, with an exp only when a score comes near the tail.

:class:`SurpriseScore` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`; its
numbers (the tail and the time of its last rise included) are part of the snapshot.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from agent.core.adaptive_baseline import MAX_COUNT

_MIN_SD = 1e-3
"""Floor of sd(u): a perfectly regular score history must not make every wobble infinite."""
_WARMUP_WINDOWS = 5
_MIN_WINDOW = 5.0
"""Fewest samples the short window covers, however sparse the signal."""
_TAIL_STEP = 0.5
"""Share of the way (in log space) a score above the tail pulls it up, for a full rise."""
_TAIL_HOLD_S = 3600.0
"""Time since the previous rise of the tail for a rise to count in full."""
_YOUNG_PEAK_TAU_S = 7 * 86400.0
"""The record peak's shortest time constant during a rule's first week, while the tail is
on (the tail needs a few routine spikes before it can stand in for the peak)."""


TAIL_CAP = 1e6
"""The record tail is learned up to this (a larger one would block records for years; a
snapshot holding more is refused, so a signal jumping to enormous values must not teach
it more)."""
SCORE_STATE_CAP = 1e15
"""A score kept in the rule's state (the record peak, the recurrence memory's slots, the
pending raise's largest score and drift score, the last sample's drift score, the
receding gate's run peak, the last fault's peak) is kept up to this: a larger
one decides nothing differently, and a snapshot holding a value above 1e18 is refused on
restore (a signal of tiny, steady noise can score far beyond it)."""


def cap_score(value: float) -> float:
    """``value`` (a signed score) kept within ± :data:`SCORE_STATE_CAP`."""
    return max(-SCORE_STATE_CAP, min(value, SCORE_STATE_CAP))


def check_surprise(
    threshold: float | None, cap: float, window: float, memory: float, window_s: float
) -> None:
    """Raise ``ValueError`` naming the first invalid surprise parameter."""
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"surprise_window_s must be a positive number, not {window_s!r}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError("surprise_threshold must be a positive number, or 0 or None (off)")
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"surprise_cap must be a positive number, not {cap!r}")
    if not (math.isfinite(window) and window >= 1):
        raise ValueError(f"surprise_window_samples must be a number >= 1, not {window!r}")
    if not (math.isfinite(memory) and memory >= window):
        raise ValueError(
            f"surprise_memory_samples must be a number >= surprise_window_samples, not {memory!r}"
        )


def check_record(
    threshold: float | None,
    ratio: float,
    tau_s: float,
    tail_ratio: float | None = None,
    tail_tau_s: float = 1.0,
) -> None:
    """Raise ``ValueError`` naming the first invalid record parameter."""
    if tail_ratio and not (math.isfinite(tail_ratio) and tail_ratio >= 1):
        raise ValueError(
            f"record_tail_ratio must be a number >= 1, or 0 or None (off), not {tail_ratio!r}"
        )
    if not (math.isfinite(tail_tau_s) and tail_tau_s > 0):
        raise ValueError(f"record_tail_tau_s must be a positive number, not {tail_tau_s!r}")
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError("record_threshold must be a positive number, or 0 or None (off)")
    if not (math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"record_ratio must be a number >= 1, not {ratio!r}")
    if not (math.isfinite(tau_s) and tau_s > 0):
        raise ValueError(f"record_tau_s must be a positive number, not {tau_s!r}")


class SurpriseScore:
    """The surprise and record state of one signal (see the module docstring)."""

    surprise_cap: float
    surprise_window_samples: float
    surprise_window_s: float
    surprise_memory_samples: float
    record_threshold: float | None
    record_ratio: float
    record_tau_s: float
    record_tail_ratio: float | None
    record_tail_tau_s: float
    surprise_min_score: float
    surprise_min_drift_score: float
    surprise_follow_score: float | None
    surprise_strong_score: float
    surprise_follow_ratio: float
    surprise_follow_rise: float | None
    _dt_typ: float | None
    _active: bool
    _pending_n: int
    _pending_peak: float
    _pending_side: float
    _pending_drift: float
    _last_drift: float
    _z_drift_signed: float
    _last_ts: float | None
    fast_tau_s: float
    huber_k: float

    if TYPE_CHECKING:  # provided by AdaptiveBaseline

        def _sd_fast(self) -> float: ...

        def _sd_drift(self, sd_f: float, ts: float) -> float: ...

        def _alpha(self, tau: float, dt: float, n: int) -> float: ...

    def _reset_surprise(self) -> None:
        self._u_short: float | None = None
        self._u_mean: float | None = None
        self._u_var: float | None = None
        self._u_n = 0
        self._peak: float | None = None
        self._peak_ts: float | None = None
        self._tail = 1.0
        self._tail_ts: float | None = None

    def _record(
        self, score: float, ts: float, judged: bool, age_s: float, *, learn_tail: bool = True
    ) -> bool:
        """Whether ``score`` is a record for this signal (see the module docstring); then
        learn it into the decaying peak. ``judged`` is False while records are not judged;
        ``age_s`` is the time since the rule started learning: on a young signal, whose
        tail has not yet learned its routine spikes, the peak forgets over a week (as it
        did before the tail) until the rule is a week old. ``learn_tail`` False: the score
        does not teach the tail (its time of day explains it, see the module docstring)."""
        peak = 0.0
        if self._peak is not None and self._peak_ts is not None:
            peak = self._peak
            if judged:  # held undecayed until records are judged
                tau = self.record_tau_s
                if age_s < _YOUNG_PEAK_TAU_S and self.record_tail_ratio is not None:
                    tau = max(tau, _YOUNG_PEAK_TAU_S)
                peak *= math.exp(-max(ts - self._peak_ts, 0.0) / tau)
        record = (
            judged
            and self.record_threshold is not None
            and score >= self.record_threshold
            and score >= self.record_ratio * peak
            and self._beyond_tail(score, ts)
        )
        self._peak = min(max(score, peak), SCORE_STATE_CAP)
        self._peak_ts = ts
        if self.record_tail_ratio is not None and not self._active and learn_tail:
            self._learn_tail(score, ts)
        return record

    def _kind_minimum(self, kind: str) -> float:
        """The smallest surprising score of ``kind`` that counts towards a raise, outside
        the follow bar: ``surprise_min_drift_score`` for the drift score (it wanders more),
        ``surprise_min_score`` otherwise."""
        return self.surprise_min_drift_score if kind == "drift" else self.surprise_min_score

    def _least_score(self, kind: str, side: float) -> float:
        """The smallest (surprising) score that counts towards a raise: the kind's minimum,
        or the **follow bar** for a sample on the same ``side`` as a pending raise that has
        seen a surprising score of at least ``surprise_strong_score``: a clear departure
        whose next sample is still out (above ``surprise_follow_score`` and
        ``surprise_follow_ratio`` × the pending raise's largest score) is one departure,
        not a lone glitch. A sample on the other side, or one that fell back to a small
        share of a tall spike, is judged as usual, as noise swings both ways and a routine
        spike is often followed by an ordinary sample. ``side`` 0: the kind's minimum."""
        least = self._kind_minimum(kind)
        if (
            self.surprise_follow_score is not None
            and self._pending_n > 0
            and side != 0.0
            and side == self._pending_side
            and self._pending_peak >= self.surprise_strong_score
        ):
            bar = max(self.surprise_follow_score, self.surprise_follow_ratio * self._pending_peak)
            if kind != "drift" or self._drift_rose(side):
                least = min(least, bar)
        return least

    def _drift_rose(self, side: float) -> bool:
        """The **rise gate** of a drift follower on ``side``: whether the drift score has
        risen, since the sample before the pending raise opened, by at least
        ``surprise_follow_rise`` × a typical sample's full pull on it (the fast level's
        learning rate × ``huber_k`` noise SDs, in SDs of the drift score; a sample after
        a short gap pulls up to 4 × that): the fast level is being dragged by the
        departure, not a drift that was already wandering (True when off). As a pending
        sample teaches the fast level at ``anomaly_learning_weight`` of its rate, the rise
        is almost all the pull of the sample *before* the opener: in practice the gate
        passes when that sample was already about 0.6 × ``huber_k`` noise SDs out on the
        same side."""
        if self.surprise_follow_rise is None:
            return True
        sd_f = self._sd_fast()
        most = self._alpha(self.fast_tau_s, self._dt_typ or 0.0, MAX_COUNT) * self.huber_k
        most *= sd_f / self._sd_drift(sd_f, self._last_ts or 0.0)
        return self._z_drift_signed * side - self._pending_drift >= self.surprise_follow_rise * most

    def _track_pending(self, opening: bool, score: float, side: float) -> None:
        """Keep the pending raise's largest score, its side and the drift score on that
        side at the sample before it opened (all 0 when nothing is pending), and this
        sample's drift score for the next one."""
        if self._pending_n == 0:
            self._pending_peak, self._pending_side, self._pending_drift = 0.0, 0.0, 0.0
        elif opening:
            self._pending_peak, self._pending_side = min(score, SCORE_STATE_CAP), side
            before = self._last_drift * side if side in (-1.0, 1.0) else 0.0
            self._pending_drift = cap_score(before)
        elif side == self._pending_side:
            self._pending_peak = max(self._pending_peak, min(score, SCORE_STATE_CAP))
        self._last_drift = cap_score(self._z_drift_signed)

    def _tail_at(self, ts: float) -> float:
        """The tail at ``ts``: decayed towards 1 since its last rise."""
        if self._tail_ts is None:
            return self._tail
        elapsed = max(ts - self._tail_ts, 0.0)
        return max(1.0 + (self._tail - 1.0) * math.exp(-elapsed / self.record_tail_tau_s), 1.0)

    def _beyond_tail(self, score: float, ts: float) -> bool:
        """Whether ``score`` is at least ``record_tail_ratio`` × the tail (True when off)."""
        ratio = self.record_tail_ratio
        return ratio is None or score >= ratio * self._tail or score >= ratio * self._tail_at(ts)

    def _learn_tail(self, score: float, ts: float) -> None:
        """Pull the tail towards ``score`` (winsorised) if it is above it (see the module
        docstring); a score below the decayed tail, the common case, needs no exp."""
        if score <= 1.0:
            return
        if self._tail_ts is not None:
            x = max(ts - self._tail_ts, 0.0) / self.record_tail_tau_s
            if score <= 1.0 + (self._tail - 1.0) * (1.0 - x):
                return  # below the decayed tail, as e^-x >= 1 - x: no exp needed
        tail = self._tail_at(ts)
        if score <= tail:
            return
        assert self.record_tail_ratio is not None
        since = _TAIL_HOLD_S if self._tail_ts is None else max(ts - self._tail_ts, 0.0)
        weight = _TAIL_STEP * min(since / _TAIL_HOLD_S, 1.0)
        winsorised = min(score, self.record_tail_ratio * tail)  # the ratio is >= 1
        self._tail = min(tail * (winsorised / tail) ** weight, TAIL_CAP)
        self._tail_ts = ts

    def _surprise_window(self) -> float:
        """The short window in samples: ``surprise_window_samples``, shortened on sparse
        signals to about ``surprise_window_s`` seconds (at least ``_MIN_WINDOW`` samples)."""
        window = self.surprise_window_samples
        if self._dt_typ:
            window = min(window, max(_MIN_WINDOW, self.surprise_window_s / self._dt_typ))
        return window

    def _surprise(self, score: float) -> float | None:
        """Score the newest robust score against the history, then learn from it."""
        u = min(score, self.surprise_cap) / self.surprise_cap
        n = self._u_n + 1
        window = self._surprise_window()
        if self._u_short is None or self._u_mean is None or self._u_var is None:
            self._u_short, self._u_mean, self._u_var = u, u, 0.0
        else:
            self._u_short += (u - self._u_short) / min(n, window)
        surprise: float | None = None
        if n > _WARMUP_WINDOWS * window:
            sd = max(math.sqrt(self._u_var), _MIN_SD)
            surprise = (self._u_short - self._u_mean) / sd
        a = 1.0 / min(n, self.surprise_memory_samples)
        delta = u - self._u_mean
        self._u_mean += a * delta
        self._u_var = (1.0 - a) * (self._u_var + a * delta * delta)
        self._u_n = min(n, 10**9)
        return surprise
