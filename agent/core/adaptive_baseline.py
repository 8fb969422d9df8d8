"""The learned normal of one signal, for the adaptive fault rule (pure, O(1) per sample).

:class:`AdaptiveBaseline` holds the estimators described in :mod:`agent.core.adaptive`:
the fast and slow levels, the noise and drift scales, the daily profile, the typical
sampling interval and the signal's resolution, with the warm-up and gap handling, and
scores a sample against them (:meth:`AdaptiveBaseline._score`).
:class:`agent.core.adaptive.AdaptiveRule` sets the parameters, validates them, and adds
the debounce state machine and the fault changes on top.
"""

from __future__ import annotations

import math
from typing import Literal

Direction = Literal["both", "up", "down"]
DIRECTIONS: tuple[str, ...] = ("both", "up", "down")
_MEANABS_TO_SD = math.sqrt(math.pi / 2.0)
"""For Gaussian noise the mean absolute deviation is SD × sqrt(2/π)."""
MAX_COUNT = 10**9
"""The sample counter saturates here (it only drives warm-up and the first averages)."""
_DT_QUANTILE_STEP = 0.05
"""Relative step of the streaming median of the sampling interval."""


class AdaptiveBaseline:
    """Learned state and estimators of one signal; the base of ``AdaptiveRule``.

    The parameters below are set by the subclass's constructor (see
    :class:`agent.core.adaptive.AdaptiveRule`); ``_active`` and the pending / clear
    counters belong to its debounce but slow the learning while an anomaly is suspected.
    """

    signal: str
    direction: Direction
    raise_threshold: float
    clear_threshold: float
    fast_tau_s: float
    scale_tau_s: float
    slow_tau_s: float
    drift_scale_tau_s: float
    min_tau_samples: float
    scale_min_samples: float
    huber_k: float
    anomaly_learning_weight: float
    warmup_samples: int
    warmup_s: float
    drift_warmup_s: float
    relearn_after_s: float
    relearn_after_samples: float
    max_weight_intervals: float
    min_scale: float
    min_rel_scale: float
    scale_leak: float
    drift_scale_leak: float
    seasonal_period_s: float | None
    seasonal_bins: int
    seasonal_tau_s: float
    keep_warm_after_gap: bool
    rearm_after_s: float | None
    variance_ratio: float | None
    variance_tau_s: float
    _active: bool

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
        self._gap_ts: float | None = None
        self._stable_since: float | None = None
        self._s_v: float | None = None
        self._s_vl: float | None = None
        self._step = 0.0
        self._z_level = 0.0
        self._z_drift_signed = 0.0  # this sample's drift score, + above the long-term level
        self._excused = False  # this sample departs as its time of day did before
        self._season_bins: list[float] | None = None
        self._season_visits: list[float] | None = None
        if self.seasonal_period_s is not None:
            self._season_bins = [0.0] * self.seasonal_bins
            self._season_visits = [0.0] * self.seasonal_bins
        self._reset_levels(None)
        self._reset_surprise()

    def _reset_surprise(self) -> None:
        """Overridden by :class:`agent.core.adaptive_surprise.SurpriseScore`."""

    def _reset_levels(self, ts: float | None) -> None:
        self._reset_ts: float | None = ts
        self._n = 0
        self._m_f: float | None = None
        self._reset_pending()
        self._clear_n = 0
        self._clear_since: float | None = None

    def _reset_pending(self) -> None:
        """Forget the pending raise, the receding gate's run and the last drift score (at
        start and after a long gap)."""
        self._pending_n = 0
        self._pending_since: float | None = None
        self._pending_peak = 0.0  # the largest score of the pending raise (see AdaptiveRule)
        self._pending_side = 0.0  # the side it departs on (AdaptiveRule._side), 0 if none
        self._pending_drift = 0.0  # the drift score on that side before it opened
        self._last_drift = 0.0  # the previous sample's drift score (signed, 0 if not judged)
        self._run_peak = 0.0  # the receding gate's run (agent.core.adaptive_recede), 0 if none
        self._run_n = 0.0

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
        if self.keep_warm_after_gap and self._is_warm(ts):
            # A warm model keeps its fast level and goes on scoring at once: only the
            # drift score waits (see _accept_gap_change), so a signal with nightly gaps
            # is watched every day instead of warming up again every morning.
            self._gap_ts = ts
            self._reset_pending()
        else:
            self._reset_levels(ts)
        self._gap_check = True

    def _rearm(self, ts: float) -> None:
        """While a fault is raised, accept its new level once the signal has settled there.

        A raised fault otherwise stays raised for the adaptation time (days), and a second
        departure in the meantime is never reported. When the samples have stayed within
        ``clear_threshold`` noise SDs of the fast level for ``rearm_after_s``, the fast
        level becomes the long-term normal: the drift score falls, the fault clears, and
        the rule can raise again (after its refractory period, or at once on a record).
        """
        if self.rearm_after_s is None or not self._active:
            self._stable_since = None
            return
        if self._z_level >= self.clear_threshold:
            self._stable_since = None
        elif self._stable_since is None:
            self._stable_since = ts
        elif ts - self._stable_since >= self.rearm_after_s:
            self._m_s = self._m_f
            self._stable_since = None

    def _is_warm(self, ts: float) -> bool:
        """Whether the fast level is past its warm-up and the drift score is judged."""
        if self._m_f is None or self._reset_ts is None or self._start_ts is None:
            return False
        if self._n < self.warmup_samples or ts - self._reset_ts < self.warmup_s:
            return False
        return ts - self._start_ts >= self.drift_warmup_s

    def _gap_settled(self, ts: float) -> bool:
        """Whether the warm-up after a long gap is over (see :meth:`_relearn`)."""
        assert self._reset_ts is not None
        if self._gap_ts is not None:
            spread = self.warmup_samples * (self._dt_typ or 0.0)
            return ts - self._gap_ts >= max(self.warmup_s, spread)
        return self._n >= self.warmup_samples and ts - self._reset_ts >= self.warmup_s

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
        if not self._gap_settled(ts):
            return
        self._gap_check = False
        self._gap_ts = None
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

    def _scale_tau(self) -> float:
        """Time constant of the noise scale and the long-term roughness: ``scale_tau_s``,
        but at least ``scale_min_samples`` typical intervals. A mean absolute deviation
        over a day of hourly samples (24) is a noisy estimate whose low swings turn
        ordinary samples into departures; faster signals are unaffected (a day at 5 min
        is 288 samples)."""
        if self._dt_typ is None:
            return self.scale_tau_s
        return max(self.scale_tau_s, self.scale_min_samples * self._dt_typ)

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
        self._n = min(self._n + 1, MAX_COUNT)
        self._n_all = min(self._n_all + 1, MAX_COUNT)
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
            leak=self.scale_leak,
            tau=self._scale_tau(),
            dt=dt,
            warm=warm,
        )
        self._learn_roughness(dt, active)
        # Fast level: Huber-clipped (unclipped in warm-up), slowed while anomalous.
        a = self._alpha(self.fast_tau_s, dt, self._n)
        if self._n > self.warmup_samples:
            bound = self.huber_k * sd_f
            resid = max(-bound, min(bound, resid))
        if active or self._pending_n > 0 or self._excused:
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
            leak=self.drift_scale_leak,
            tau=self.drift_scale_tau_s,
            dt=dt,
            warm=self._s_d is None or ts - self._start_ts < self.drift_warmup_s,
        )

    def _learn_roughness(self, dt: float, active: bool) -> None:
        """Learn the short- and long-term mean step between consecutive samples.

        The variance score compares the two: steps, not deviations from the level, so a
        level shift (one large step) does not read as more noise, and the long-term mean
        is of the same statistic, so a smooth or autocorrelated signal is judged against
        its own roughness. Steps are winsorised at ``raise_threshold`` long-term steps, so
        a burst of spikes weighs by how many there are, not by how tall.
        """
        if self.variance_ratio is None or dt <= 0:
            return
        if self._s_vl is None or self._s_v is None:
            self._s_vl = self._s_v = self._step
            return
        step = min(self._step, self.raise_threshold * max(self._s_vl, self._floor()))
        self._s_v += self._alpha(self.variance_tau_s, dt, self._n_all) * (step - self._s_v)
        a = self._alpha(self._scale_tau(), dt, self._n_all)
        if active:
            a *= self.anomaly_learning_weight
        self._s_vl += a * (step - self._s_vl)

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
            visits[index] = min(visits[index] + weight, MAX_COUNT)
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
        leak: float,
        tau: float,
        dt: float,
        warm: bool,
    ) -> float:
        """Update a mean-absolute-deviation scale robustly.

        In warm-up every deviation counts in full. After it, a deviation below ``gate`` SDs
        counts winsorised at ``huber_k`` SDs (times ``weight``); one beyond the gate counts
        at ``leak`` of the rate (winsorised at the raise threshold): ``scale_leak`` for the
        noise scale, ``drift_scale_leak`` (small) for the drift spread, so that a slow
        drift cannot teach itself to be normal.
        """
        old = current or 0.0
        a = self._alpha(tau, dt, self._n_all)
        if not warm:
            if deviation < gate * sd:
                a *= weight
                deviation = min(deviation, self.huber_k * sd)
            else:
                a *= leak
                deviation = min(deviation, self.raise_threshold * sd)
        return old + a * (deviation - old)

    def _side(self, kind: str, x: float, season: float) -> float:
        """Which way the sample departs: 1 above, -1 below (the sample from the fast level
        for the level score, the fast level from the long-term one for the drift score),
        2 for the variance score (noisier)."""
        assert self._m_f is not None
        assert self._m_s is not None
        if kind == "variance":
            return 2.0
        above = self._m_f >= self._m_s if kind == "drift" else x - season >= self._m_f
        return 1.0 if above else -1.0

    def _drift_judged(self, ts: float) -> bool:
        """Whether the drift score is judged at ``ts``: from ``drift_warmup_s`` after the
        rule started, and not in the warm-up after a long gap."""
        return (
            self._start_ts is not None
            and ts - self._start_ts >= self.drift_warmup_s
            and self._gap_ts is None
        )

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
        self._z_drift_signed = 0.0
        assert self._start_ts is not None
        if self._drift_judged(ts):
            self._z_drift_signed = (self._m_f - self._m_s) / self._sd_drift(sd_f, ts)
            z_drift = self._directional(self._z_drift_signed)
        self._z_level = z_level
        z_var = 0.0
        if (
            self.variance_ratio is not None
            and ts - self._start_ts >= self.drift_warmup_s
            and self._s_v is not None
            and self._s_vl is not None
        ):
            # Variance score: the short-term roughness against the long-term one, scaled
            # so that ``variance_ratio`` times the usual roughness scores the raise threshold.
            ratio = self._s_v / max(self._s_vl, self._floor())
            z_var = self.raise_threshold * (ratio - 1.0) / (self.variance_ratio - 1.0)
        if z_var > max(z_drift, z_level):
            return z_var, "variance"
        if z_drift > z_level:
            return z_drift, "drift"
        return z_level, "level"
