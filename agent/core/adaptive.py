"""Adaptive fault rule: learns a signal's normal on this device and flags departures.

A fixed limit ("fan below 1500 rpm") fires only when a part has already failed. This rule
learns what is normal for *this* signal on *this* device and raises when the signal leaves
it, so a slowly failing fan or a drifting sensor is flagged while it is still inside every
fixed limit.

How it works (all streaming, O(1) time and memory per sample, no look-ahead: each sample
is scored against what was learned *before* it, then learned from):

* **Fast level** ``m_f``: a time-decayed mean of the signal (time constant ``fast_tau_s``)
  updated with Huber clipping, so one outlier moves it by at most ``huber_k`` robust SDs.
* **Noise scale** ``sd_f``: a time-decayed mean absolute deviation from ``m_f``
  (winsorised, time constant ``scale_tau_s``), times 1.2533 so it reads as an SD for
  Gaussian noise. It never falls below a floor: ``min_scale``, ``min_rel_scale`` × the
  level, and the signal's resolution (its smallest change seen), so quantised or flat
  signals do not produce infinite scores.
* **Level score** ``z_level = (x - m_f) / sd_f``: catches spikes and steps.
* **Slow level** ``m_s``: ``m_f`` smoothed again with time constant ``slow_tau_s``: the
  long-term normal.
* **Drift score** ``z_drift = (m_f - m_s) / sd_d`` where ``sd_d`` is the learned normal spread
  of ``m_f - m_s`` (time constant ``drift_scale_tau_s``; at least the white-noise spread of
  ``m_f``). It catches a level that has moved away from its long-term normal, even when
  each sample is unremarkable: a fan losing 1 %/day. Because ``sd_d`` is learned, a signal
  with a large normal daily swing needs a proportionally larger drift to be flagged.

* **Daily profile** (``seasonal_period_s``, default one day; ``None`` or 0 turns it off): a
  ``seasonal_bins``-bin profile of the signal's departure from its long-term level,
  learned over ``seasonal_tau_s``, kept at zero mean (so it never absorbs a drift), and
  subtracted before the scores are computed. It is applied only where it is clearly larger
  than the noise (shrunk to nothing below half a noise SD of spread), so a signal without
  a daily cycle is not made noisier by a profile of learned noise.

The score is the larger of the two (in the watched ``direction``: ``both``, ``up`` or
``down``). The rule raises when the score is at or above ``raise_threshold`` for
``raise_samples`` consecutive samples spanning at least ``raise_after_s`` seconds (with the
**surprise stage**, on unless ``surprise_threshold`` is 0 or None: when the score is at or
above ``surprise_min_score`` (``surprise_min_drift_score`` for the drift score) and
surprising for this signal, see
:mod:`agent.core.adaptive_surprise`, for those samples; after a surprising score of at
least ``surprise_strong_score`` a surprising sample on the same side counts from the
lower **follow bar**, ``surprise_follow_score`` or ``surprise_follow_ratio`` × that score
(the larger), so a clear departure whose next sample is still out is not a lone glitch;
the follower may be a drift score on the same side, the fast level dragged along by the
departure, which then counts from the follow bar instead of the drift minimum if it rose
enough since before the raise opened: ``surprise_follow_rise``, the rise gate), and
clears when it is below ``clear_threshold`` (hysteresis) for ``clear_samples`` samples and
``clear_after_s`` seconds. After a clear it does not raise again for ``refractory_s``, but
for a **fresh departure** (on unless ``refractory_quiet_s`` is 0 or None): a run of scores
that begins after every sample scored below the clear threshold for ``refractory_quiet_s``
(1.5 h) and at least 10 sampling intervals, and whose level score reaches
``refractory_fresh_ratio`` (0.5) × the largest level score of the fault that cleared
(:mod:`agent.core.adaptive_fresh`).

**Record stage** (on unless ``record_threshold`` is 0 or None): a score at or above
``record_threshold`` (10) that is also ``record_ratio`` (2.5) times the largest score of
the signal's recent past (a peak decaying over ``record_tau_s``, two days; a week in the
rule's first week while the tail is on) and
``record_tail_ratio`` (3) times its learned tail (the size of its routine large scores,
learned per unit of time over ``record_tail_tau_s``, 30 days) raises at once, on
that one sample, even inside the refractory period: a departure this signal has not come
near for days (a crash to zero, a spike ten times its usual swing) is news, and waiting
for the debounce would raise late or never (a lone spike). A signal whose spikes are
routine keeps a high peak and is judged by the debounced surprise stage alone. See
:mod:`agent.core.adaptive_surprise`.

**Recurrence memory** (on unless ``recurrence_ratio`` is 0 or None, or the daily profile
is off): a level departure below ``recurrence_ratio`` (1.2) × the largest level score of
its hour of the day on *each* of the two previous days is not raised (a daily spike the
hourly profile cannot follow is how the signal behaves); records are never excused. Such
an excused score does not teach the record tail (a nightly spike would otherwise hide a
first spike at a new hour), and a level record must also be ``record_ratio`` × the larger
of its hour's peaks on the last two days it was watched (kept over a gap, so a device
back after a weekend off does not raise its nightly spike as a record). See
:mod:`agent.core.adaptive_recurrence`. **Receding gate** (``recede_ratio``, 0.6): a level
departure below that share of its run's peak is a burst falling back, not raised
(:mod:`agent.core.adaptive_recede`).

**Learning and adaptation.** Time constants are in seconds and decay by elapsed time, so
irregular sampling is handled; each is stretched to at least ``min_tau_samples`` typical
sampling intervals (a streaming median of the intervals) so sparse signals still average
enough samples; the noise scale and the long-term roughness (time constant
``scale_tau_s``, a day) to at least ``scale_min_samples`` (100; 0 turns it off) intervals,
as a mean absolute deviation over a day of hourly samples (24) swings enough to make
ordinary samples look like departures (with the defaults, signals sampled at least every
14.4 min are unaffected). Scales learn from winsorised deviations. A deviation beyond the clear
threshold teaches the drift spread only at ``drift_scale_leak`` (0.02) of the normal rate:
too little for a slow drift to become normal, enough for a spread learned too small to
recover. A deviation beyond the raise threshold teaches the noise scale at ``scale_leak``
of the rate (1: in full, winsorised at the raise threshold), so a signal whose normal has
large regular swings (a daily square wave) learns a noise scale that makes them
unremarkable, and a departure from that pattern stands out; a lone outlier still moves the
scale by at most the winsorised amount. While a raise is pending or the
fault is active the fast level learns at ``anomaly_learning_weight`` of its rate and the
profile does not learn. The slow level keeps following, which is the documented
**adaptation time**: a sustained new level is accepted as normal, and the fault clears,
after about 2 to 4 × ``slow_tau_s`` (7 to 13 days, longer for larger steps) with
re-arming off, and once the level has settled for ``rearm_after_s`` (12 h) with it on;
a level that keeps moving (an ongoing drift) stays flagged until it settles.

**Warm-up and gaps.** No alarm before ``warmup_samples`` samples and ``warmup_s`` seconds;
the drift score needs ``drift_warmup_s`` since the first sample too. A missing value
(``None``, NaN, non-numeric) is a gap and changes nothing. A gap longer than
``relearn_after_s`` (and ``relearn_after_samples`` typical intervals) on a rule past its
warm-ups (``keep_warm_after_gap``) keeps the fast level and scores the level at once,
holding only the drift score for ``warmup_s``; on a rule still warming up it relearns the
fast level and restarts the warm-up; the scales and the profile are kept. When that
warm-up ends, a level change across the gap
smaller than ``raise_threshold`` noise SDs is accepted as the new long-term normal; a
larger one stays a departure from the old normal and is raised by the drift score.
Shorter gaps keep the baseline; a sample after a gap does not weigh more than
``max_weight_intervals`` typical intervals' worth.

**Variance score** (``variance_ratio``, ``variance_tau_s``): the short-term mean step
between consecutive samples against its long-term mean, scaled so that ``variance_ratio``
times the usual roughness scores the raise threshold (a third score beside level and
drift). **Re-arm** (``rearm_after_s``): a raised fault whose samples have stayed within
``clear_threshold`` of the fast level that long accepts the new level (see
:meth:`AdaptiveBaseline._rearm`), so a later departure can raise again.

Not modelled: weekly or other non-daily cycles.

``FaultChange.threshold`` is the **bound in signal units** that the score crossed (for a
raise) or must stay within (for a clear): ``m_f ± k·sd_f`` for the level
score, ``m_s ± k·sd_d`` for the drift score (the daily profile added back for the level
score), with ``k`` the raise threshold (with the surprise stage ``surprise_min_score`` or
``surprise_min_drift_score``, or the follow bar a follower crossed, which can be below the
clear threshold: such a raise reports the lower bound it crossed) or the clear threshold;
``value`` is the sample's value.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from agent.core.adaptive_baseline import DIRECTIONS, AdaptiveBaseline, Direction
from agent.core.adaptive_checks import require_numbers
from agent.core.adaptive_fresh import FreshDeparture, check_fresh
from agent.core.adaptive_recede import RecedeGate, check_recede
from agent.core.adaptive_recurrence import RecurrenceMemory, check_recurrence
from agent.core.adaptive_snapshot import (
    FLOAT_STATE,
    INT_STATE,
    LIST_STATE,
    SNAPSHOT_VERSION,
    parse_snapshot,
)
from agent.core.adaptive_surprise import (
    SurpriseScore,
    check_record,
    check_surprise,
)
from agent.core.fault_types import FaultChange
from protocol import Sample, Severity

_SAMPLE_FIELDS = frozenset(Sample.__struct_fields__) - {"ts", "custom"}
_MAX_MAGNITUDE = 1e15
"""Larger values are not valid measurements (the protocol rejects them too)."""


class AdaptiveRule(FreshDeparture, RecedeGate, RecurrenceMemory, SurpriseScore, AdaptiveBaseline):
    """Fault rule that learns a signal's normal and raises on departures from it.

    See the module docstring for the model. ``signal`` names a :class:`protocol.Sample`
    field (``"temp_c"``, ``"fan_rpm"``...) or a key of ``sample.custom``. Pure and
    deterministic: the clock is ``sample.ts``.
    """

    def __init__(
        self,
        signal: str,
        *,
        code: str | None = None,
        severity: Severity = Severity.WARNING,
        direction: Direction = "both",
        raise_threshold: float = 5.0,
        clear_threshold: float = 3.0,
        raise_samples: int = 2,
        raise_after_s: float = 0.0,
        clear_samples: int = 5,
        clear_after_s: float = 3600.0,
        refractory_s: float = 12 * 3600.0,
        fast_tau_s: float = 3600.0,
        scale_tau_s: float = 86400.0,
        slow_tau_s: float = 3 * 86400.0,
        drift_scale_tau_s: float = 7 * 86400.0,
        min_tau_samples: float = 10.0,
        scale_min_samples: float = 100.0,
        huber_k: float = 2.5,
        anomaly_learning_weight: float = 0.1,
        warmup_samples: int = 30,
        warmup_s: float = 3 * 3600.0,
        drift_warmup_s: float = 86400.0,
        relearn_after_s: float = 6 * 3600.0,
        relearn_after_samples: float = 20.0,
        keep_warm_after_gap: bool = True,
        rearm_after_s: float | None = 43200.0,
        variance_ratio: float | None = 3.0,
        variance_tau_s: float = 7200.0,
        max_weight_intervals: float = 4.0,
        min_scale: float = 0.0,
        min_rel_scale: float = 0.002,
        scale_leak: float = 1.0,
        drift_scale_leak: float = 0.02,
        seasonal_period_s: float | None = 86400.0,
        seasonal_bins: int = 24,
        seasonal_tau_s: float = 7 * 86400.0,
        surprise_threshold: float | None = 1.8,
        surprise_min_score: float = 3.0,
        surprise_min_drift_score: float = 4.0,
        surprise_follow_score: float | None = 2.5,
        surprise_strong_score: float = 4.5,
        surprise_follow_ratio: float = 0.4,
        surprise_follow_rise: float | None = 0.7,
        surprise_cap: float = 10.0,
        surprise_window_samples: float = 10.0,
        surprise_window_s: float = 7200.0,
        surprise_memory_samples: float = 2000.0,
        record_threshold: float | None = 10.0,
        record_ratio: float = 2.5,
        record_tau_s: float = 2 * 86400.0,
        record_tail_ratio: float | None = 3.0,
        record_tail_tau_s: float = 30 * 86400.0,
        recurrence_ratio: float | None = 1.2,
        recede_ratio: float | None = 0.6,
        refractory_quiet_s: float | None = 5400.0,
        refractory_fresh_ratio: float = 0.5,
    ) -> None:
        require_numbers(locals(), AdaptiveRule.__init__)  # first: "0.4" would fail later
        if not isinstance(signal, str) or not signal:
            raise ValueError("signal must be a non-empty field name")
        if direction not in DIRECTIONS:
            allowed = ", ".join(DIRECTIONS)
            raise ValueError(f"direction must be one of {allowed}, not {direction!r}")
        if not (0 < clear_threshold <= raise_threshold):
            raise ValueError("thresholds must satisfy 0 < clear_threshold <= raise_threshold")
        counts = {
            "raise_samples": raise_samples,
            "clear_samples": clear_samples,
            "warmup_samples": warmup_samples,
            "seasonal_bins": seasonal_bins,
        }
        for name, value in counts.items():
            # A count of 2.5 was cut to 2 silently; say so instead (2.0 is fine).
            # Typed first: "2" or a list failed later on "<", a huge int on float().
            whole = isinstance(value, numbers.Integral) or (
                isinstance(value, numbers.Real) and float(value).is_integer()
            )
            if isinstance(value, bool) or not whole:
                raise ValueError(f"{name} must be a whole number, not {value!r}")
        if raise_samples < 1 or clear_samples < 1 or warmup_samples < 1:
            raise ValueError("raise_samples, clear_samples and warmup_samples must be >= 1")
        positive = {
            "fast_tau_s": fast_tau_s,
            "scale_tau_s": scale_tau_s,
            "slow_tau_s": slow_tau_s,
            "drift_scale_tau_s": drift_scale_tau_s,
            "huber_k": huber_k,
            "relearn_after_s": relearn_after_s,
            "max_weight_intervals": max_weight_intervals,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        non_negative = {
            "raise_after_s": raise_after_s,
            "clear_after_s": clear_after_s,
            "refractory_s": refractory_s,
            "min_tau_samples": min_tau_samples,
            "scale_min_samples": scale_min_samples,
            "warmup_s": warmup_s,
            "drift_warmup_s": drift_warmup_s,
            "relearn_after_samples": relearn_after_samples,
            "min_scale": min_scale,
            "min_rel_scale": min_rel_scale,
        }
        for name, value in non_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
        if seasonal_period_s is not None and not (
            math.isfinite(seasonal_period_s) and seasonal_period_s >= 0
        ):
            raise ValueError("seasonal_period_s must be a positive number, or 0 or None (off)")
        if not (2 <= seasonal_bins <= 1024):
            raise ValueError("seasonal_bins must be between 2 and 1024")
        if not (math.isfinite(seasonal_tau_s) and seasonal_tau_s > 0):
            raise ValueError("seasonal_tau_s must be a positive number")
        if not (0 <= scale_leak <= 1):
            raise ValueError("scale_leak must be between 0 and 1")
        if not (0 <= drift_scale_leak <= 1):
            raise ValueError("drift_scale_leak must be between 0 and 1")
        if not (0 <= surprise_follow_ratio <= 1):
            raise ValueError("surprise_follow_ratio must be between 0 and 1")
        if not (0 <= anomaly_learning_weight <= 1):
            raise ValueError("anomaly_learning_weight must be between 0 and 1")
        for name, value in (
            ("surprise_min_score", surprise_min_score),
            ("surprise_min_drift_score", surprise_min_drift_score),
            ("surprise_follow_score", surprise_follow_score or 0.0),
            ("surprise_strong_score", surprise_strong_score),
            ("surprise_follow_rise", surprise_follow_rise or 0.0),
        ):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
        check_surprise(
            surprise_threshold,
            surprise_cap,
            surprise_window_samples,
            surprise_memory_samples,
            surprise_window_s,
        )
        check_record(
            record_threshold, record_ratio, record_tau_s, record_tail_ratio, record_tail_tau_s
        )
        check_recurrence(recurrence_ratio)
        check_recede(recede_ratio)
        check_fresh(refractory_quiet_s, refractory_fresh_ratio)
        if variance_ratio and not (math.isfinite(variance_ratio) and variance_ratio > 1):
            raise ValueError("variance_ratio must be a number > 1, or 0 or None (off)")
        if not (math.isfinite(variance_tau_s) and variance_tau_s > 0):
            raise ValueError(f"variance_tau_s must be a positive number, not {variance_tau_s!r}")
        if rearm_after_s and not (math.isfinite(rearm_after_s) and rearm_after_s > 0):
            raise ValueError("rearm_after_s must be a positive number, or 0 or None (off)")
        if not isinstance(keep_warm_after_gap, bool | int):
            raise ValueError("keep_warm_after_gap must be true or false")

        self.signal = signal
        self.code = code if code is not None else f"{signal}_anomaly"
        self.severity = severity
        self.direction: Direction = direction
        self.raise_threshold = float(raise_threshold)
        self.clear_threshold = float(clear_threshold)
        self.raise_samples = int(raise_samples)
        self.raise_after_s = float(raise_after_s)
        self.clear_samples = int(clear_samples)
        self.clear_after_s = float(clear_after_s)
        self.refractory_s = float(refractory_s)
        self.fast_tau_s = float(fast_tau_s)
        self.scale_tau_s = float(scale_tau_s)
        self.slow_tau_s = float(slow_tau_s)
        self.drift_scale_tau_s = float(drift_scale_tau_s)
        self.min_tau_samples = float(min_tau_samples)
        self.scale_min_samples = float(scale_min_samples)
        self.huber_k = float(huber_k)
        self.anomaly_learning_weight = float(anomaly_learning_weight)
        self.warmup_samples = int(warmup_samples)
        self.warmup_s = float(warmup_s)
        self.drift_warmup_s = float(drift_warmup_s)
        self.relearn_after_s = float(relearn_after_s)
        self.relearn_after_samples = float(relearn_after_samples)
        self.keep_warm_after_gap = bool(keep_warm_after_gap)
        self.rearm_after_s = float(rearm_after_s) if rearm_after_s else None
        self.variance_ratio = float(variance_ratio) if variance_ratio else None
        self.variance_tau_s = float(variance_tau_s)
        self.max_weight_intervals = float(max_weight_intervals)
        self.min_scale = float(min_scale)
        self.min_rel_scale = float(min_rel_scale)
        self.scale_leak = float(scale_leak)
        self.drift_scale_leak = float(drift_scale_leak)
        # 0 turns the daily profile off as None does (a TOML configuration cannot say None).
        self.seasonal_period_s = float(seasonal_period_s) if seasonal_period_s else None
        self.seasonal_bins = int(seasonal_bins)
        self.seasonal_tau_s = float(seasonal_tau_s)
        self.surprise_threshold = float(surprise_threshold) if surprise_threshold else None
        self.surprise_min_score = float(surprise_min_score)
        self.surprise_min_drift_score = float(surprise_min_drift_score)
        self.surprise_follow_score = float(surprise_follow_score) if surprise_follow_score else None
        self.surprise_strong_score = float(surprise_strong_score)
        self.surprise_follow_ratio = float(surprise_follow_ratio)
        self.surprise_follow_rise = float(surprise_follow_rise) if surprise_follow_rise else None
        self.surprise_cap = float(surprise_cap)
        self.surprise_window_samples = float(surprise_window_samples)
        self.surprise_window_s = float(surprise_window_s)
        self.surprise_memory_samples = float(surprise_memory_samples)
        self.record_threshold = float(record_threshold) if record_threshold else None
        self.record_ratio = float(record_ratio)
        self.record_tau_s = float(record_tau_s)
        self.record_tail_ratio = float(record_tail_ratio) if record_tail_ratio else None
        self.record_tail_tau_s = float(record_tail_tau_s)
        self.recurrence_ratio = float(recurrence_ratio) if recurrence_ratio else None
        self.recede_ratio = float(recede_ratio) if recede_ratio else None
        self.refractory_quiet_s = float(refractory_quiet_s) if refractory_quiet_s else None
        self.refractory_fresh_ratio = float(refractory_fresh_ratio)
        self._active = False
        self._follow_bound: float | None = None
        self._reset_all()
        self._reset_recurrence()
        self._reset_fresh()

    # --- public interface ---------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True while the fault is raised."""
        return self._active

    def update(self, sample: Sample) -> FaultChange | None:
        """Score one sample against the learned normal, then learn from it.

        Returns a raise or clear when the debounced condition is met, else ``None``.
        Samples must come in time order; a sample not newer than the previous one is
        ignored, and a missing value is a gap.
        """
        x = self._read(sample)
        ts = float(sample.ts)
        if x is None or not (math.isfinite(ts) and abs(ts) <= _MAX_MAGNITUDE):
            return None
        if self._last_ts is not None and ts <= self._last_ts:
            return None

        dt = 0.0 if self._last_ts is None else ts - self._last_ts
        if self._last_ts is not None and self._is_long_gap(dt):
            self._relearn(ts)
            self._forget_quiet()
            dt = 0.0
        self._learn_interval(dt)
        self._step = 0.0 if self._last_x is None or dt <= 0 else abs(x - self._last_x)
        if self._last_x is not None and x != self._last_x:
            step = abs(x - self._last_x)
            self._resolution = step if self._resolution is None else min(self._resolution, step)

        change: FaultChange | None = None
        self._excused = False
        season = self._season(ts)
        y = x - season  # the model works on the deseasonalised signal
        if self._m_f is None:
            self._start(ts, y)
        else:
            self._accept_gap_change(ts)
            scored = self._score(y, ts)
            if scored is not None:
                change = self._judge(ts, x, season, *scored)
                self._rearm(ts)
            self._learn(y, dt, ts)
            self._learn_season(x, ts, dt)
        self._last_ts = ts
        self._last_x = x
        return change

    def snapshot(self) -> dict[str, Any]:
        """The learned state as a small JSON-serialisable dict (constant size)."""
        state: dict[str, Any] = {
            "v": SNAPSHOT_VERSION,
            "signal": self.signal,
            "active": self._active,
            "gap_check": self._gap_check,
        }
        for name in FLOAT_STATE:
            state[name] = getattr(self, "_" + name)
        for name in INT_STATE:
            state[name] = getattr(self, "_" + name)
        state["season_bins"] = None if self._season_bins is None else list(self._season_bins)
        state["season_visits"] = None if self._season_visits is None else list(self._season_visits)
        for name in LIST_STATE:
            values = getattr(self, "_" + name)
            state[name] = None if values is None else list(values)
        return state

    def restore(self, state: dict[str, Any]) -> bool:
        """Resume from :meth:`snapshot`; state that is corrupt or not ours is refused (False)."""
        bins = self.seasonal_bins if self.seasonal_period_s is not None else None
        parsed = parse_snapshot(state, self.signal, bins, self._rec_day1 is not None)
        if parsed is None:
            return False
        if "rec_day1" not in parsed:
            self._reset_recurrence()  # a snapshot from before the memory: start it empty
        for name, value in parsed.items():
            setattr(self, "_" + name, value)
        return True

    # --- reading --------------------------------------------------------------------------

    def _read(self, sample: Sample) -> float | None:
        if self.signal in _SAMPLE_FIELDS:
            raw = getattr(sample, self.signal)
        else:
            raw = sample.custom.get(self.signal)
        if raw is None or isinstance(raw, str):
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and abs(value) <= _MAX_MAGNITUDE else None

    # --- debounce ----------------------------------------------------------------------------

    def _judge(
        self, ts: float, x: float, season: float, score: float, kind: str
    ) -> FaultChange | None:
        """Debounce the sample's robust score; with ``surprise_threshold`` set, a raise
        also needs the score to be surprising for this signal (clearing is unchanged)."""
        assert self._start_ts is not None
        surprise = self._surprise(score) if self.surprise_threshold is not None else None
        age = ts - self._start_ts
        recurring = kind == "level" and self._recurring(score, ts)
        # A departure its time of day explains does not teach the record tail, and a
        # level record must also stand out from what its time of day did on the last
        # two days (the daily spikes the tail no longer learns).
        record = self._record(
            score, ts, age >= self.drift_warmup_s, age, learn_tail=not recurring
        ) and (kind != "level" or self._beyond_slot(score, ts, self.record_ratio))
        self._excused = recurring and score >= self.clear_threshold
        self._learn_recurrence(self._z_level, ts)
        self._follow_bound = None
        level_side = self._side("level", x, season)
        side = level_side if kind == "level" else self._side(kind, x, season)
        self._track_run(self._z_level, level_side)
        self._track_fresh(score, kind, ts)
        if record and not self._active:
            change = self._debounce(ts, x, season, score, kind, score, immediate=True)
            self._track_pending(False, score, side)  # raised at once: nothing pending
            return change
        trigger = score
        receding = self.surprise_threshold is not None and self._receding(score, kind, side, ts)
        if (recurring or receding) and not self._active:
            trigger = 0.0  # its time of day did as much before, or a burst falling back
        elif self.surprise_threshold is not None and not self._active:
            least = self._least_score(kind, side)
            # A raise by a sample that only passed the follow bar reports that bound.
            self._follow_bound = least if score < self._kind_minimum(kind) else None
            if surprise is None or surprise < self.surprise_threshold or score < least:
                trigger = 0.0  # not (yet) a departure worth raising
            else:
                trigger = max(score, self.raise_threshold)
        opening = self._pending_n == 0
        change = self._debounce(ts, x, season, score, kind, trigger)
        self._track_pending(opening, score, side)
        return change

    def _debounce(
        self,
        ts: float,
        x: float,
        season: float,
        score: float,
        kind: str,
        trigger: float,
        *,
        immediate: bool = False,
    ) -> FaultChange | None:
        if not self._active:
            refractory = self._in_refractory(ts, self.refractory_s)
            if not immediate and (trigger < self.raise_threshold or refractory):
                self._pending_n = 0
                self._pending_since = None
                return None
            if self._pending_n == 0:
                self._pending_since = ts
            self._pending_n += 1
            assert self._pending_since is not None
            held = ts - self._pending_since
            if not immediate and (
                self._pending_n < self.raise_samples or held < self.raise_after_s
            ):
                return None
            self._active = True
            self._fault_raised()
            self._pending_n = 0
            self._pending_since = None
            self._clear_n = 0
            self._clear_since = None
            return self._change(True, ts, x, season, score, kind)
        if trigger >= self.clear_threshold:
            self._clear_n = 0
            self._clear_since = None
            return None
        if self._clear_n == 0:
            self._clear_since = ts
        self._clear_n += 1
        assert self._clear_since is not None
        if self._clear_n < self.clear_samples or ts - self._clear_since < self.clear_after_s:
            return None
        self._active = False
        self._clear_n = 0
        self._clear_since = None
        self._last_clear_ts = ts
        return self._change(False, ts, x, season, score, kind)

    def _change(
        self, raised: bool, ts: float, x: float, season: float, score: float, kind: str
    ) -> FaultChange:
        assert self._m_f is not None
        assert self._m_s is not None
        sd_f = self._sd_fast()
        if kind == "drift":
            centre, sd, current = self._m_s, self._sd_drift(sd_f, ts), self._m_f
        else:
            centre, sd, current = self._m_f + season, sd_f, x
        sign = 1.0 if current >= centre else -1.0
        if self.direction == "up":
            sign = 1.0
        elif self.direction == "down":
            sign = -1.0
        limit = self.clear_threshold
        if raised and self.surprise_threshold is None:
            limit = self.raise_threshold
        elif raised:  # with the surprise stage a raise needs surprise_min_(drift_)score SDs
            limit = max(self._kind_minimum(kind), self.clear_threshold)
            if self._follow_bound is not None:
                limit = min(limit, self._follow_bound)  # it passed the follow bar only
        bound = centre + sign * limit * sd
        where = "above" if current >= centre else "below"
        if not raised:
            message = (
                f"{self.signal} {_fmt(x)} is back within {_fmt(self.clear_threshold)} robust SDs "
                f"of its learned normal {_fmt(self._m_f + season)}"
            )
        elif kind == "variance":
            message = (
                f"{self.signal} has become noisier: its recent sample-to-sample changes are "
                f"{1 + score / self.raise_threshold * ((self.variance_ratio or 2) - 1):.1f}× "
                f"their usual size (around {_fmt(centre)})"
            )
        elif kind == "drift":
            message = (
                f"{self.signal} has drifted: its recent level {_fmt(current)} is "
                f"{score:.1f} robust SDs (of its normal variation) {where} "
                f"its long-term normal {_fmt(centre)}"
            )
        else:
            message = (
                f"{self.signal} {_fmt(x)} is {score:.1f} robust SDs {where} "
                f"its learned normal {_fmt(centre)}"
            )
        return FaultChange(
            code=self.code,
            raised=raised,
            severity=self.severity,
            ts=ts,
            value=x,
            threshold=bound,
            message=message,
        )


def _fmt(value: float) -> str:
    """Four significant digits, but whole numbers up to a million in full (12346, not 1.235e+04)."""
    if 1e4 <= abs(value) < 1e6:
        return f"{value:.0f}"
    return f"{value:.4g}"
