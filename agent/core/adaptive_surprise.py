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

The surprise judges lasting departures; a lone sample far outside anything this signal has
done (a spike, a crash to zero) is judged by its **record** instead: ``peak`` is the largest
robust score seen, decaying with time constant ``record_tau_s``. A score at or above
``record_threshold`` that is also at least ``record_ratio`` × ``peak`` is a record: a
departure this signal has not shown for weeks, which the rule raises at once (no debounce).
A bursty signal whose spikes are routine keeps a high peak, so its routine spikes are not
records. Records are judged only once the signal has been scored for ``drift_warmup_s``.

:class:`SurpriseScore` is a mixin of :class:`agent.core.adaptive.AdaptiveRule`; its four
numbers are part of the rule's snapshot.
"""

from __future__ import annotations

import math

_MIN_SD = 1e-3
"""Floor of sd(u): a perfectly regular score history must not make every wobble infinite."""
_WARMUP_WINDOWS = 5
_MIN_WINDOW = 5.0
"""Fewest samples the short window covers, however sparse the signal."""


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


def check_record(threshold: float | None, ratio: float, tau_s: float) -> None:
    """Raise ``ValueError`` naming the first invalid record parameter."""
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
    _dt_typ: float | None

    def _reset_surprise(self) -> None:
        self._u_short: float | None = None
        self._u_mean: float | None = None
        self._u_var: float | None = None
        self._u_n = 0
        self._peak: float | None = None
        self._peak_ts: float | None = None

    def _record(self, score: float, ts: float, judged: bool) -> bool:
        """Whether ``score`` is a record for this signal (see the module docstring); then
        learn it into the decaying peak. ``judged`` is False while records are not judged."""
        peak = 0.0
        if self._peak is not None and self._peak_ts is not None:
            peak = self._peak * math.exp(-max(ts - self._peak_ts, 0.0) / self.record_tau_s)
        record = (
            judged
            and self.record_threshold is not None
            and score >= self.record_threshold
            and score >= self.record_ratio * peak
        )
        self._peak = max(score, peak)
        self._peak_ts = ts
        return record

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
