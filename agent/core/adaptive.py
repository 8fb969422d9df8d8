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

* **Daily profile** (``seasonal_period_s``, default one day; ``None`` turns it off): a
  ``seasonal_bins``-bin profile of the signal's departure from its long-term level,
  learned over ``seasonal_tau_s``, kept at zero mean (so it never absorbs a drift), and
  subtracted before the scores are computed. It is applied only where it is clearly larger
  than the noise (shrunk to nothing below half a noise SD of spread), so a signal without
  a daily cycle is not made noisier by a profile of learned noise.

The score is the larger of the two (in the watched ``direction``: ``both``, ``up`` or
``down``). The rule raises when the score is at or above ``raise_threshold`` for
``raise_samples`` consecutive samples spanning at least ``raise_after_s`` seconds, and
clears when it is below ``clear_threshold`` (hysteresis) for ``clear_samples`` samples and
``clear_after_s`` seconds. After a clear it does not raise again for ``refractory_s``.

**Learning and adaptation.** Time constants are in seconds and decay by elapsed time, so
irregular sampling is handled; each is stretched to at least ``min_tau_samples`` typical
sampling intervals (a streaming median of the intervals) so sparse signals still average
enough samples. Scales learn from winsorised deviations; a deviation beyond the raise
threshold (noise scale) or the clear threshold (drift spread) teaches them only at
``scale_leak`` of the normal rate: too little for an anomaly or a slow drift to become
normal, enough for a scale learned too small to recover. While a raise is pending or the
fault is active the fast level learns at ``anomaly_learning_weight`` of its rate and the
profile does not learn. The slow level keeps following, which is the documented
**adaptation time**: a sustained new level is accepted as normal, and the fault clears,
after about 2 to 4 × ``slow_tau_s`` (7 to 13 days with the defaults, longer for larger
steps); a level that keeps moving (an ongoing drift) stays flagged.

**Warm-up and gaps.** No alarm before ``warmup_samples`` samples and ``warmup_s`` seconds;
the drift score needs ``drift_warmup_s`` since the first sample too. A missing value
(``None``, NaN, non-numeric) is a gap and changes nothing. A gap longer than
``relearn_after_s`` (and ``relearn_after_samples`` typical intervals) relearns the fast
level and restarts the warm-up instead of alarming on the first samples after it; the
scales and the profile are kept. When that warm-up ends, a level change across the gap
smaller than ``raise_threshold`` noise SDs is accepted as the new long-term normal; a
larger one stays a departure from the old normal and is raised by the drift score.
Shorter gaps keep the baseline; a sample after a gap does not weigh more than
``max_weight_intervals`` typical intervals' worth.

Not modelled: weekly or other non-daily cycles, and changes in variance alone (a large
enough variance increase still raises through repeated level excursions).

``FaultChange.threshold`` is the **bound in signal units** that the score crossed (for a
raise) or must stay within (for a clear): ``m_f ± raise_threshold·sd_f`` for the level
score, ``m_s ± raise_threshold·sd_d`` for the drift score (the daily profile added back for the
level score); ``value`` is the sample's value.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from agent.core.fault_types import FaultChange
from protocol import Sample, Severity

Direction = Literal["both", "up", "down"]
_DIRECTIONS: tuple[str, ...] = ("both", "up", "down")
_SAMPLE_FIELDS = frozenset(Sample.__struct_fields__) - {"ts", "custom"}
_MEANABS_TO_SD = math.sqrt(math.pi / 2.0)
"""For Gaussian noise the mean absolute deviation is SD × sqrt(2/π)."""
_SNAPSHOT_VERSION = 1
_MAX_COUNT = 10**9
"""The sample counter saturates here (it only drives warm-up and the first averages)."""
_MAX_MAGNITUDE = 1e15
"""Larger values are not valid measurements (the protocol rejects them too)."""
_MAX_STATE = 1e18
"""A restored number beyond this cannot come from valid samples: the state is corrupt."""
_DT_QUANTILE_STEP = 0.05
"""Relative step of the streaming median of the sampling interval."""

# Learned state kept in snapshots: numbers (None until known) and counters.
_FLOAT_STATE: tuple[str, ...] = (
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
)
_INT_STATE: tuple[str, ...] = ("n", "n_all", "pending_n", "clear_n")


class AdaptiveRule:
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
        raise_samples: int = 3,
        raise_after_s: float = 0.0,
        clear_samples: int = 5,
        clear_after_s: float = 3600.0,
        refractory_s: float = 12 * 3600.0,
        fast_tau_s: float = 3600.0,
        scale_tau_s: float = 86400.0,
        slow_tau_s: float = 3 * 86400.0,
        drift_scale_tau_s: float = 7 * 86400.0,
        min_tau_samples: float = 10.0,
        huber_k: float = 2.5,
        anomaly_learning_weight: float = 0.1,
        warmup_samples: int = 30,
        warmup_s: float = 3 * 3600.0,
        drift_warmup_s: float = 86400.0,
        relearn_after_s: float = 6 * 3600.0,
        relearn_after_samples: float = 20.0,
        max_weight_intervals: float = 4.0,
        min_scale: float = 0.0,
        min_rel_scale: float = 0.002,
        scale_leak: float = 0.02,
        seasonal_period_s: float | None = 86400.0,
        seasonal_bins: int = 24,
        seasonal_tau_s: float = 7 * 86400.0,
    ) -> None:
        if not isinstance(signal, str) or not signal:
            raise ValueError("signal must be a non-empty field name")
        if direction not in _DIRECTIONS:
            allowed = ", ".join(_DIRECTIONS)
            raise ValueError(f"direction must be one of {allowed}, not {direction!r}")
        if not (0 < clear_threshold <= raise_threshold):
            raise ValueError("thresholds must satisfy 0 < clear_threshold <= raise_threshold")
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
            math.isfinite(seasonal_period_s) and seasonal_period_s > 0
        ):
            raise ValueError("seasonal_period_s must be a positive number or None")
        if not (2 <= seasonal_bins <= 1024):
            raise ValueError("seasonal_bins must be between 2 and 1024")
        if not (math.isfinite(seasonal_tau_s) and seasonal_tau_s > 0):
            raise ValueError("seasonal_tau_s must be a positive number")
        if not (0 <= scale_leak <= 1):
            raise ValueError("scale_leak must be between 0 and 1")
        if not (0 <= anomaly_learning_weight <= 1):
            raise ValueError("anomaly_learning_weight must be between 0 and 1")

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
        self.huber_k = float(huber_k)
        self.anomaly_learning_weight = float(anomaly_learning_weight)
        self.warmup_samples = int(warmup_samples)
        self.warmup_s = float(warmup_s)
        self.drift_warmup_s = float(drift_warmup_s)
        self.relearn_after_s = float(relearn_after_s)
        self.relearn_after_samples = float(relearn_after_samples)
        self.max_weight_intervals = float(max_weight_intervals)
        self.min_scale = float(min_scale)
        self.min_rel_scale = float(min_rel_scale)
        self.scale_leak = float(scale_leak)
        self.seasonal_period_s = None if seasonal_period_s is None else float(seasonal_period_s)
        self.seasonal_bins = int(seasonal_bins)
        self.seasonal_tau_s = float(seasonal_tau_s)
        self._active = False
        self._reset_all()

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
            dt = 0.0
        self._learn_interval(dt)
        if self._last_x is not None and x != self._last_x:
            step = abs(x - self._last_x)
            self._resolution = step if self._resolution is None else min(self._resolution, step)

        change: FaultChange | None = None
        season = self._season(ts)
        y = x - season  # the model works on the deseasonalised signal
        if self._m_f is None:
            self._start(ts, y)
        else:
            self._accept_gap_change(ts)
            scored = self._score(y, ts)
            if scored is not None:
                change = self._debounce(ts, x, season, *scored)
            self._learn(y, dt, ts)
            self._learn_season(x, ts, dt)
        self._last_ts = ts
        self._last_x = x
        return change

    def snapshot(self) -> dict[str, Any]:
        """The learned state as a small JSON-serialisable dict (constant size)."""
        state: dict[str, Any] = {
            "v": _SNAPSHOT_VERSION,
            "signal": self.signal,
            "active": self._active,
            "gap_check": self._gap_check,
        }
        for name in _FLOAT_STATE:
            state[name] = getattr(self, "_" + name)
        for name in _INT_STATE:
            state[name] = getattr(self, "_" + name)
        state["season_bins"] = None if self._season_bins is None else list(self._season_bins)
        state["season_visits"] = None if self._season_visits is None else list(self._season_visits)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`snapshot`; state that is corrupt or not ours is ignored."""
        bins = self.seasonal_bins if self.seasonal_period_s is not None else None
        parsed = _parse_snapshot(state, self.signal, bins)
        if parsed is None:
            return
        for name, value in parsed.items():
            setattr(self, "_" + name, value)

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

    # --- learning -------------------------------------------------------------------------

    def _reset_all(self) -> None:
        self._last_ts: float | None = None
        self._last_x: float | None = None
        self._dt_typ: float | None = None
        self._resolution: float | None = None
        self._s_f: float | None = None
        self._s_d: float | None = None
        self._last_clear_ts: float | None = None
        self._m_s: float | None = None
        self._start_ts: float | None = None
        self._n_all = 0
        self._gap_check = False
        self._season_bins: list[float] | None = None
        self._season_visits: list[float] | None = None
        if self.seasonal_period_s is not None:
            self._season_bins = [0.0] * self.seasonal_bins
            self._season_visits = [0.0] * self.seasonal_bins
        self._reset_levels(None)

    def _reset_levels(self, ts: float | None) -> None:
        self._reset_ts: float | None = ts
        self._n = 0
        self._m_f: float | None = None
        self._pending_n = 0
        self._pending_since: float | None = None
        self._clear_n = 0
        self._clear_since: float | None = None

    def _is_long_gap(self, dt: float) -> bool:
        limit = self.relearn_after_s
        if self._dt_typ is not None:
            limit = max(limit, self.relearn_after_samples * self._dt_typ)
        return dt > limit

    def _relearn(self, ts: float) -> None:
        """After a long gap, relearn the fast level and restart the warm-up.

        The long-term normal and the scales are kept until the warm-up ends; then
        :meth:`_accept_gap_change` decides whether the level found after the gap is the
        new normal or a departure to flag.
        """
        self._reset_levels(ts)
        self._gap_check = True

    def _accept_gap_change(self, ts: float) -> None:
        """At the end of the warm-up after a long gap, accept a modest level change.

        The level may legitimately move while nobody watches, so a change smaller than
        ``raise_threshold`` noise SDs (or one in a direction not watched) becomes the new
        long-term normal at once. A larger one is kept as a departure from the old normal,
        which the drift score raises.
        """
        assert self._reset_ts is not None
        if not self._gap_check or self._m_f is None or self._m_s is None:
            return
        if self._n < self.warmup_samples or ts - self._reset_ts < self.warmup_s:
            return
        self._gap_check = False
        change = self._directional((self._m_f - self._m_s) / self._sd_fast())
        if change < self.raise_threshold:  # includes any change in an unwatched direction
            self._m_s = self._m_f

    def _learn_interval(self, dt: float) -> None:
        """Track the median sampling interval (multiplicative streaming quantile)."""
        if dt <= 0:
            return
        if self._dt_typ is None:
            self._dt_typ = dt
        elif dt > self._dt_typ:
            self._dt_typ *= 1 + _DT_QUANTILE_STEP
        elif dt < self._dt_typ:
            self._dt_typ *= 1 - _DT_QUANTILE_STEP

    def _start(self, ts: float, x: float) -> None:
        """First sample ever, or first after a long gap: the fast level starts here."""
        self._reset_ts = ts
        self._n = 1
        self._m_f = x
        if self._m_s is None:
            self._m_s = x
            self._start_ts = ts
            self._n_all = 1
        if self._s_f is None:
            self._s_f = 0.0

    def _tau(self, tau: float) -> float:
        if self._dt_typ is None:
            return tau
        return max(tau, self.min_tau_samples * self._dt_typ)

    def _alpha(self, tau: float, dt: float, n: int) -> float:
        """Weight of the newest observation: decay by elapsed time, mean of the first n."""
        dt_w = dt
        if self._dt_typ is not None:
            dt_w = min(dt, self.max_weight_intervals * self._dt_typ)
        alpha = -math.expm1(-dt_w / self._tau(tau))
        return max(alpha, 1.0 / max(n, 1))

    def _floor(self) -> float:
        level = abs(self._m_s) if self._m_s is not None else 0.0
        floor = max(self.min_scale, self.min_rel_scale * level)
        if self._resolution is not None:
            floor = max(floor, self._resolution)
        return max(floor, 1e-12)

    def _sd_fast(self) -> float:
        return max(_MEANABS_TO_SD * (self._s_f or 0.0), self._floor())

    def _sd_drift(self, sd_f: float, ts: float) -> float:
        level = abs(self._m_s) if self._m_s is not None else 0.0
        floor = max(self.min_scale, self.min_rel_scale * level, 1e-12)
        if self._dt_typ is not None:
            # White-noise spread of the fast level: sd * sqrt(dt / (2 tau)).
            floor = max(floor, sd_f * math.sqrt(self._dt_typ / (2 * self._tau(self.fast_tau_s))))
        return max(_MEANABS_TO_SD * (self._s_d or 0.0), floor)

    def _learn(self, x: float, dt: float, ts: float) -> None:
        assert self._m_f is not None
        assert self._m_s is not None
        assert self._start_ts is not None
        self._n = min(self._n + 1, _MAX_COUNT)
        self._n_all = min(self._n_all + 1, _MAX_COUNT)
        active = self._active
        sd_f = self._sd_fast()
        resid = x - self._m_f
        # Noise scale: residuals beyond the raise threshold barely teach it.
        warm = self._n_all <= self.warmup_samples or ts - self._start_ts < self.warmup_s
        self._s_f = self._learn_scale(
            self._s_f,
            abs(resid),
            sd_f,
            gate=self.raise_threshold,
            weight=self.anomaly_learning_weight if active else 1.0,
            tau=self.scale_tau_s,
            dt=dt,
            warm=warm,
        )
        # Fast level: Huber-clipped (unclipped in warm-up), slowed while anomalous.
        a = self._alpha(self.fast_tau_s, dt, self._n)
        if self._n > self.warmup_samples:
            bound = self.huber_k * sd_f
            resid = max(-bound, min(bound, resid))
        if active or self._pending_n > 0:
            a *= self.anomaly_learning_weight
        self._m_f += a * resid
        # Slow level follows the fast one: this is the adaptation to a new normal.
        a = self._alpha(self.slow_tau_s, dt, self._n_all)
        self._m_s += a * (self._m_f - self._m_s)
        # Normal spread of (fast - slow): a departure beyond the clear threshold barely
        # teaches it, so a slow drift cannot teach itself to be normal.
        self._s_d = self._learn_scale(
            self._s_d,
            abs(self._m_f - self._m_s),
            self._sd_drift(self._sd_fast(), ts),
            gate=self.clear_threshold,
            weight=1.0,
            tau=self.drift_scale_tau_s,
            dt=dt,
            warm=self._s_d is None or ts - self._start_ts < self.drift_warmup_s,
        )

    def _season_position(self, ts: float) -> tuple[int, int, float]:
        """The two profile bins around ``ts`` and the interpolation weight of the second."""
        assert self.seasonal_period_s is not None
        phase = (ts % self.seasonal_period_s) / self.seasonal_period_s
        u = phase * self.seasonal_bins - 0.5
        lower = math.floor(u)
        frac = u - lower
        return lower % self.seasonal_bins, (lower + 1) % self.seasonal_bins, frac

    def _season(self, ts: float) -> float:
        """The learned daily profile at ``ts`` (zero mean over the period), or 0.

        The profile is applied only where it is clearly larger than the noise: it is
        shrunk to nothing while its spread is below half the noise SD and fully applied
        from one noise SD on, so a signal without seasonality is not made noisier by a
        profile of learned noise.
        """
        bins = self._season_bins
        if bins is None:
            return 0.0
        count = len(bins)
        mean = math.fsum(bins) / count
        spread = math.sqrt(math.fsum((b - mean) ** 2 for b in bins) / count)
        ratio = spread / self._sd_fast() if self._m_s is not None else 0.0
        gain = min(1.0, max(0.0, 2.0 * ratio - 1.0))
        if gain == 0.0:
            return 0.0
        i0, i1, frac = self._season_position(ts)
        return gain * ((1 - frac) * bins[i0] + frac * bins[i1] - mean)

    def _learn_season(self, x: float, ts: float, dt: float) -> None:
        """Learn the profile from the departure of ``x`` from the slow level.

        Each sample teaches the two bins around it (weighted by closeness). A bin's
        time constant is ``seasonal_tau_s``; its first visits are plainly averaged.
        Anomalous samples are not learned from.
        """
        if self._season_bins is None or self._m_s is None or self._m_f is None:
            return
        if self._active or self._pending_n > 0:
            return
        i0, i1, frac = self._season_position(ts)
        bins, visits = self._season_bins, self._season_visits
        assert visits is not None
        dt_w = dt
        if self._dt_typ is not None:
            dt_w = min(dt, self.max_weight_intervals * self._dt_typ)
        rate = -math.expm1(-dt_w * self.seasonal_bins / self.seasonal_tau_s)
        predicted = (1 - frac) * bins[i0] + frac * bins[i1]
        bound = self.huber_k * self._sd_fast()
        err = max(-bound, min(bound, (x - self._m_s) - predicted))
        for index, weight in ((i0, 1 - frac), (i1, frac)):
            if weight <= 0:
                continue
            visits[index] = min(visits[index] + weight, _MAX_COUNT)
            a = max(rate, 1.0 / max(visits[index], 1.0)) * weight
            bins[index] += a * err

    def _learn_scale(
        self,
        current: float | None,
        deviation: float,
        sd: float,
        *,
        gate: float,
        weight: float,
        tau: float,
        dt: float,
        warm: bool,
    ) -> float:
        """Update a mean-absolute-deviation scale robustly.

        In warm-up every deviation counts in full. After it, a deviation below ``gate`` SDs
        counts winsorised at ``huber_k`` SDs (times ``weight``); one beyond the gate counts
        only at ``scale_leak`` (winsorised at the raise threshold): enough for a scale that
        was learned too small to recover, too little for an anomaly to become normal.
        """
        old = current or 0.0
        a = self._alpha(tau, dt, self._n_all)
        if not warm:
            if deviation < gate * sd:
                a *= weight
                deviation = min(deviation, self.huber_k * sd)
            else:
                a *= self.scale_leak
                deviation = min(deviation, self.raise_threshold * sd)
        return old + a * (deviation - old)

    # --- scoring and debounce -----------------------------------------------------------------

    def _directional(self, z: float) -> float:
        if self.direction == "up":
            return max(z, 0.0)
        if self.direction == "down":
            return max(-z, 0.0)
        return abs(z)

    def _score(self, x: float, ts: float) -> tuple[float, str] | None:
        """The sample's anomaly score (robust SDs) and its detector; None in warm-up."""
        assert self._m_f is not None
        assert self._m_s is not None
        assert self._reset_ts is not None
        if self._n < self.warmup_samples or ts - self._reset_ts < self.warmup_s:
            return None
        sd_f = self._sd_fast()
        z_level = self._directional((x - self._m_f) / sd_f)
        z_drift = 0.0
        assert self._start_ts is not None
        if ts - self._start_ts >= self.drift_warmup_s:
            z_drift = self._directional((self._m_f - self._m_s) / self._sd_drift(sd_f, ts))
        if z_drift > z_level:
            return z_drift, "drift"
        return z_level, "level"

    def _debounce(
        self, ts: float, x: float, season: float, score: float, kind: str
    ) -> FaultChange | None:
        if not self._active:
            refractory = (
                self._last_clear_ts is not None and ts - self._last_clear_ts < self.refractory_s
            )
            if score < self.raise_threshold or refractory:
                self._pending_n = 0
                self._pending_since = None
                return None
            if self._pending_n == 0:
                self._pending_since = ts
            self._pending_n += 1
            assert self._pending_since is not None
            held = ts - self._pending_since
            if self._pending_n < self.raise_samples or held < self.raise_after_s:
                return None
            self._active = True
            self._pending_n = 0
            self._pending_since = None
            self._clear_n = 0
            self._clear_since = None
            return self._change(True, ts, x, season, score, kind)
        if score >= self.clear_threshold:
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
        limit = self.raise_threshold if raised else self.clear_threshold
        bound = centre + sign * limit * sd
        where = "above" if current >= centre else "below"
        if not raised:
            message = (
                f"{self.signal} {_fmt(x)} is back within {_fmt(self.clear_threshold)} robust SDs "
                f"of its learned normal {_fmt(self._m_f + season)}"
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


def _parse_snapshot(state: Any, signal: str, season_bins: int | None) -> dict[str, Any] | None:
    """Validate a snapshot; None when anything is missing, mistyped or not finite."""
    if not isinstance(state, dict) or state.get("v") != _SNAPSHOT_VERSION:
        return None
    if state.get("signal") != signal:
        return None
    parsed: dict[str, Any] = {}
    for name in ("active", "gap_check"):
        if not isinstance(state.get(name), bool):
            return None
        parsed[name] = state[name]
    for name in _FLOAT_STATE:
        value = state.get(name)
        if value is None:
            parsed[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or abs(value) > _MAX_STATE:
            return None
        parsed[name] = float(value)
    for name in _INT_STATE:
        value = state.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        parsed[name] = value
    for name in ("dt_typ", "s_f", "s_d", "resolution"):
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
    if (parsed["clear_n"] > 0) != (parsed["clear_since"] is not None):
        return None
    for name in ("season_bins", "season_visits"):
        values = _parse_floats(state.get(name), season_bins)
        if values is False:
            return None
        parsed[name] = values
    if parsed["season_visits"] is not None and min(parsed["season_visits"]) < 0:
        return None
    return parsed
