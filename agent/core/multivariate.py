"""Multivariate fault rule: learns how a group of signals moves together, flags a broken relation.

Many faults show only in the relation between signals: the SoC is hot *for its load and
fan speed*, the flow is low *for the pump current and pressure*. Each signal may stay
inside its own normal range while the combination is one never seen before. This rule
learns the joint normal of a configured group of signals on this device, online, and
raises when the group leaves it, naming the signals that drove the raise.

How it works (streaming, no look-ahead, O(k²) memory and O(k³) time per sample for k
signals, pure Python: see :mod:`agent.core.small_linalg`):

* **Smoothing**: each signal is smoothed by a time-decayed mean (``smooth_tau_s``), so
  white measurement noise averages out and a sustained shift of a fraction of a noise SD
  stands out.
* **Joint normal**: the mean vector ``μ`` (``mean_tau_s``) and covariance ``S``
  (``cov_tau_s``) of the smoothed signals, both time-decayed, so slow wander (a room
  warming up) is learned as normal. Signals that wander a lot get a large variance and
  weigh little; a relation that always holds (current follows flow) gets a strong
  correlation, so breaking it costs a lot even when each signal alone looks fine.
* **Score**: Hotelling's ``T² = (s - μ)ᵀ·R⁻¹·(s - μ)`` of the smoothed vector ``s``, with
  ``R = S`` plus ``ridge`` × its diagonal plus a floor per signal (``min_scale``,
  ``min_rel_scale`` × the level) so a constant or quantised signal cannot make it
  infinite. For k normal signals T² averages about k.
* **Which signals**: T² is the sum of the terms ``d_i·(R⁻¹·d)_i``; a raise lists the
  signals with the largest positive terms and their shares of T² (``FaultChange.drivers``
  and the message), with each signal's current and learned values.

The rule raises when ``T² ≥ raise_threshold`` for ``raise_samples`` consecutive samples
spanning ``raise_after_s`` seconds, and clears when ``T² < clear_threshold`` (hysteresis)
for ``clear_samples`` samples and ``clear_after_s`` seconds (the state machine of
:class:`agent.core.faults.DebouncedRule`). After a clear it does not raise again for
``refractory_s``.

**Learning.** A sample whose T² is at or above the clear threshold teaches at
``suspect_learning_weight`` of the normal rate; while a raise is pending nothing is
learned; while the fault is active the rule learns at ``active_learning_weight`` (2 %) of
the rate. So an anomaly does not teach itself to be normal during its raise, the fault
clears when the relation comes back, and a lasting new normal (the machine after a
repair) is accepted after about ``mean_tau_s / active_learning_weight`` (7 h with the
defaults) instead of staying raised for ever.

**Defaults** were chosen on SKAB's recorded test bed (one sample a second, faults lasting
minutes): see ``bench/skab.py``. For slower processes scale the three time constants.

**Warm-up and gaps.** No score before ``warmup_samples`` samples. A sample missing any
signal of the group (``None``, NaN, non-numeric) is a gap and changes nothing. A gap
longer than ``relearn_after_s`` restarts the smoothing and the warm-up (the learned
normal is kept). Time constants decay by elapsed time and are stretched to at least
``min_tau_samples`` typical sampling intervals.

``FaultChange.value`` is T², ``threshold`` the limit it crossed (raise) or went below
(clear).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from agent.core.fault_types import FaultChange
from agent.core.faults import SIGNALS, Debounce, DebouncedRule
from agent.core.multivariate_state import MultivariateState, parse_state
from agent.core.small_linalg import MAX_DIM, cholesky, quadratic_terms
from protocol import Sample, Severity

_MAX_MAGNITUDE = 1e15
_MAX_COUNT = 10**9
_DT_QUANTILE_STEP = 0.05
_MAX_DRIVERS = 3
_MIN_DRIVER_SHARE = 0.1


class MultivariateRule(DebouncedRule):
    """Fault rule on the joint behaviour of ``signals`` (see the module docstring).

    Each name is a :class:`protocol.Sample` field or a key of ``sample.custom``. Pure and
    deterministic: the clock is ``sample.ts``.
    """

    def __init__(
        self,
        signals: Sequence[str],
        *,
        code: str | None = None,
        severity: Severity = Severity.WARNING,
        raise_threshold: float = 35.0,
        clear_threshold: float = 20.0,
        raise_samples: int = 3,
        raise_after_s: float = 0.0,
        clear_samples: int = 5,
        clear_after_s: float = 0.0,
        refractory_s: float = 0.0,
        smooth_tau_s: float = 20.0,
        mean_tau_s: float = 500.0,
        cov_tau_s: float = 500.0,
        min_tau_samples: float = 2.0,
        warmup_samples: int = 300,
        ridge: float = 0.01,
        min_scale: float = 0.0,
        min_rel_scale: float = 0.001,
        relearn_after_s: float = 3600.0,
        max_weight_intervals: float = 4.0,
        suspect_learning_weight: float = 0.5,
        active_learning_weight: float = 0.02,
    ) -> None:
        names = list(signals) if not isinstance(signals, str) else []
        if len(names) < 2 or len(names) > MAX_DIM:
            raise ValueError(f"signals must list 2 to {MAX_DIM} signal names")
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise ValueError("signals must be distinct non-empty names")
        if not (0 < clear_threshold <= raise_threshold and math.isfinite(raise_threshold)):
            raise ValueError("thresholds must satisfy 0 < clear_threshold <= raise_threshold")
        for name, count in (
            ("raise_samples", raise_samples),
            ("clear_samples", clear_samples),
            ("warmup_samples", warmup_samples),
        ):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be a whole number >= 1, not {count!r}")
        positive = {
            "smooth_tau_s": smooth_tau_s,
            "mean_tau_s": mean_tau_s,
            "cov_tau_s": cov_tau_s,
            "relearn_after_s": relearn_after_s,
            "max_weight_intervals": max_weight_intervals,
        }
        non_negative = {
            "raise_after_s": raise_after_s,
            "clear_after_s": clear_after_s,
            "refractory_s": refractory_s,
            "min_tau_samples": min_tau_samples,
            "ridge": ridge,
            "min_scale": min_scale,
            "min_rel_scale": min_rel_scale,
            "suspect_learning_weight": suspect_learning_weight,
            "active_learning_weight": active_learning_weight,
        }
        for name, value in (*positive.items(), *non_negative.items()):
            ok = not isinstance(value, bool) and isinstance(value, int | float)
            if not ok or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, not {value!r}")
            if name in positive and value == 0:
                raise ValueError(f"{name} must be a positive number, not {value!r}")
        super().__init__(
            code if code is not None else "multivariate_anomaly",
            severity,
            raise_debounce=Debounce(raise_samples, float(raise_after_s)),
            clear_debounce=Debounce(clear_samples, float(clear_after_s)),
            threshold=float(raise_threshold),
        )
        self.signals: tuple[str, ...] = tuple(names)
        self.raise_threshold = float(raise_threshold)
        self.clear_threshold = float(clear_threshold)
        self.refractory_s = float(refractory_s)
        self.smooth_tau_s = float(smooth_tau_s)
        self.mean_tau_s = float(mean_tau_s)
        self.cov_tau_s = float(cov_tau_s)
        self.min_tau_samples = float(min_tau_samples)
        self.warmup_samples = warmup_samples
        self.ridge = float(ridge)
        self.min_scale = float(min_scale)
        self.min_rel_scale = float(min_rel_scale)
        self.relearn_after_s = float(relearn_after_s)
        self.max_weight_intervals = float(max_weight_intervals)
        self.suspect_learning_weight = float(suspect_learning_weight)
        self.active_learning_weight = float(active_learning_weight)
        self.state = MultivariateState.empty(len(names))
        self.last_score: float | None = None
        """T² of the latest scored sample (None in warm-up): for replay and diagnostics."""
        self._observed: tuple[bool, bool, float | None] | None = None
        self._terms: list[float] = []

    # --- public interface ---------------------------------------------------------------

    def update(self, sample: Sample) -> FaultChange | None:
        """Score one sample against the learned joint normal, then learn from it."""
        x = self._read(sample)
        ts = float(sample.ts)
        st = self.state
        if x is None or not (math.isfinite(ts) and abs(ts) <= _MAX_MAGNITUDE):
            return None
        if st.last_ts is not None and ts <= st.last_ts:
            return None
        dt = 0.0 if st.last_ts is None else ts - st.last_ts
        if st.last_ts is not None and dt > max(self.relearn_after_s, 20 * (st.dt_typ or 0.0)):
            st.smooth = None  # long gap: restart smoothing and warm-up, keep the normal
            st.n_since_reset = 0
            self._streak, self._streak_since = 0, None
            dt = 0.0
        self._learn_interval(dt)
        st.last_ts = ts
        if st.smooth is None or st.mean is None:
            st.smooth = list(x)
            if st.mean is None:
                st.mean = list(x)
            st.n_since_reset = 1
            self.last_score = None
            return None
        a = self._alpha(self.smooth_tau_s, dt)
        s = st.smooth
        for i, xi in enumerate(x):
            s[i] += a * (xi - s[i])
        st.n_since_reset = min(st.n_since_reset + 1, _MAX_COUNT)
        change = None
        self._observed = self._observe(ts)
        if self._observed is not None:
            change = super().update(sample)
        if change is not None:
            change = self._describe(change)
        if not self._active and self._streak == 0:
            self._learn(dt, 1.0)
        elif self._active and self.active_learning_weight > 0:
            self._learn(dt, self.active_learning_weight)
        return change

    def observe(self, sample: Sample) -> tuple[bool, bool, float | None] | None:
        """The raise / clear conditions computed by :meth:`update` for this sample."""
        return self._observed

    def learned_mean(self) -> dict[str, float]:
        """The learned normal level of each signal (empty before the first sample)."""
        mean = self.state.mean
        return {} if mean is None else dict(zip(self.signals, mean, strict=True))

    def snapshot(self) -> dict[str, Any]:
        """The learned state and the debounce state as a small JSON-serialisable dict."""
        return {**super().snapshot(), **self.state.as_dict(self.signals)}

    def restore(self, state: dict[str, Any]) -> bool:
        """Resume from :meth:`snapshot`; state that is corrupt or not ours is refused (False)."""
        parsed = parse_state(state, self.signals)
        if parsed is None or not super().restore(state):
            return False
        self.state = parsed
        return True

    # --- scoring -------------------------------------------------------------------------

    def _observe(self, ts: float) -> tuple[bool, bool, float | None] | None:
        st = self.state
        if st.n_since_reset < self.warmup_samples or st.n_learned < 2:
            self.last_score = None
            return None
        scored = self._t2()
        if scored is None:  # numerically degenerate: no observation, learn as usual
            self.last_score = None
            return None
        t2, self._terms = scored
        self.last_score = t2
        raise_cond = t2 >= self.raise_threshold
        if (
            not self._active
            and st.last_clear_ts is not None
            and ts - st.last_clear_ts < self.refractory_s
        ):
            raise_cond = False
        return raise_cond, t2 < self.clear_threshold, t2

    def _t2(self) -> tuple[float, list[float]] | None:
        st = self.state
        assert st.smooth is not None
        assert st.mean is not None
        k = len(self.signals)
        cov = st.cov
        reg = [row[:] for row in cov]
        for i in range(k):
            floor = max(self.min_scale, self.min_rel_scale * abs(st.mean[i]), 1e-9)
            reg[i][i] = cov[i][i] * (1.0 + self.ridge) + floor * floor
        low = cholesky(reg)
        if low is None:
            return None
        d = [si - mi for si, mi in zip(st.smooth, st.mean, strict=True)]
        return quadratic_terms(low, d)

    def _describe(self, change: FaultChange) -> FaultChange:
        if not change.raised:
            self.state.last_clear_ts = change.ts
            return dataclasses.replace(change, threshold=self.clear_threshold)
        terms = self._terms
        positive = math.fsum(t for t in terms if t > 0) or 1.0
        ranked = sorted(range(len(terms)), key=lambda i: -terms[i])
        drivers = [
            (self.signals[i], terms[i] / positive)
            for n, i in enumerate(ranked[:_MAX_DRIVERS])
            if n == 0 or terms[i] / positive >= _MIN_DRIVER_SHARE
        ]
        st = self.state
        assert st.smooth is not None
        assert st.mean is not None
        parts = [
            f"{name} {share:.0%} ({_fmt(st.smooth[self.signals.index(name)])} vs normal "
            f"{_fmt(st.mean[self.signals.index(name)])})"
            for name, share in drivers
        ]
        score = change.value if change.value is not None else 0.0
        message = (
            f"{', '.join(self.signals)} left their learned joint normal "
            f"(T² {score:.1f} >= {self.raise_threshold:g}); driven by {', '.join(parts)}"
        )
        return dataclasses.replace(change, message=message, drivers=tuple(drivers))

    # --- learning ------------------------------------------------------------------------

    def _learn(self, dt: float, weight: float) -> None:
        """Move the mean and covariance towards the current smoothed vector (at ``weight``
        of the normal rate)."""
        st = self.state
        assert st.smooth is not None
        assert st.mean is not None
        st.n_learned = min(st.n_learned + 1, _MAX_COUNT)
        a_m = self._alpha(self.mean_tau_s, dt, st.n_learned)
        a_c = self._alpha(self.cov_tau_s, dt, st.n_learned)
        a_m, a_c = a_m * weight, a_c * weight
        if self.last_score is not None and self.last_score >= self.clear_threshold:
            a_m *= self.suspect_learning_weight  # suspicious: learn it only slowly
            a_c *= self.suspect_learning_weight
        d = [si - mi for si, mi in zip(st.smooth, st.mean, strict=True)]
        mean = st.mean
        for i, di in enumerate(d):
            mean[i] += a_m * di
        keep = 1.0 - a_c
        for i, row in enumerate(st.cov):
            di = d[i]
            for j in range(i + 1):
                row[j] = keep * (row[j] + a_c * di * d[j])
                st.cov[j][i] = row[j]

    def _learn_interval(self, dt: float) -> None:
        """Track the median sampling interval (multiplicative streaming quantile)."""
        st = self.state
        if dt <= 0:
            return
        if st.dt_typ is None:
            st.dt_typ = dt
        elif dt > st.dt_typ:
            st.dt_typ *= 1 + _DT_QUANTILE_STEP
        elif dt < st.dt_typ:
            st.dt_typ *= 1 - _DT_QUANTILE_STEP

    def _alpha(self, tau: float, dt: float, n: int | None = None) -> float:
        """Weight of the newest observation: decay by elapsed time (and, given the number
        of observations so far ``n``, at least their plain mean's weight)."""
        dt_typ = self.state.dt_typ
        if dt_typ is not None:
            dt = min(dt, self.max_weight_intervals * dt_typ)
            tau = max(tau, self.min_tau_samples * dt_typ)
        alpha = -math.expm1(-dt / tau)
        return alpha if n is None else max(alpha, 1.0 / max(n, 1))

    # --- reading -------------------------------------------------------------------------

    def _read(self, sample: Sample) -> list[float] | None:
        values = []
        for name in self.signals:
            raw = getattr(sample, name) if name in SIGNALS else sample.custom.get(name)
            if raw is None or isinstance(raw, str):
                return None
            try:
                value = float(raw)
            except (TypeError, ValueError):
                return None
            if not (math.isfinite(value) and abs(value) <= _MAX_MAGNITUDE):
                return None
            values.append(value)
        return values


def _fmt(value: float) -> str:
    """Four significant digits (whole numbers up to a million in full)."""
    if 1e4 <= abs(value) < 1e6:
        return f"{value:.0f}"
    return f"{value:.4g}"
