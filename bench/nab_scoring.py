"""NAB scoring of a detector's detections (pure; written from NAB's published description).

The Numenta Anomaly Benchmark (Lavin & Ahmad 2015) scores a detector on a labelled series
row by row:

* Each labelled anomaly **window** is a span of rows. The *first* detection inside a window
  earns ``tp_weight × σ(y)``, where ``σ(y) = 2 / (1 + e^(5y)) - 1`` is the scaled sigmoid and
  ``y = -(right - i + 1) / width`` the detection's relative position (about -1 at the
  window's first row, about 0 at its last): early detection earns nearly 1, late nearly 0.
  Later detections in the same window neither earn nor cost anything.
* A window without a detection costs ``fn_weight``.
* A detection outside every window is a false positive costing ``fp_weight``: the full
  weight before the first window; after a window, ``fp_weight × σ(y)`` (a negative number)
  with ``y = (i - right_prev) / (width_prev - 1)`` its distance past the end of the
  preceding window, so a detection just after a window costs little, one far after it the
  full weight (σ is taken as -1 beyond ``y = 3``).
* Rows in the **probationary period** (the first 15 % of the series, at most 750 rows) are
  not scored: detections there neither earn nor cost.
* Scores are summed over every series of the corpus and **normalised** so that the null
  detector (never detects: ``-fn_weight`` per window) scores 0 and the perfect one (detects
  at the first row of every window, nothing else) scores 100.

Three application profiles weigh these terms (``profiles.json``): ``standard``
(tp 1, fn 1, fp 0.11), ``reward_low_FP_rate`` (fp 0.22) and ``reward_low_FN_rate`` (fn 2).
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS_FACTOR = 5000
"""The probationary period is at most ``PROBATION_FRACTION × 5000`` (750) rows."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One application profile: the weights of true positives, misses and false positives."""

    name: str
    tp_weight: float
    fn_weight: float
    fp_weight: float


def load_profiles(path: str | Path) -> dict[str, Profile]:
    """NAB's ``profiles.json``: ``{name: {"CostMatrix": {"tpWeight": ...}}}``."""
    data = json.loads(Path(path).read_text())
    profiles: dict[str, Profile] = {}
    for name, entry in data.items():
        costs = entry["CostMatrix"]
        profiles[name] = Profile(
            name, float(costs["tpWeight"]), float(costs["fnWeight"]), float(costs["fpWeight"])
        )
    return profiles


def scaled_sigmoid(y: float) -> float:
    """``2 / (1 + e^(5y)) - 1``: +1 far before a window's end, 0 at it, -1 well after."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(length: int, fraction: float = PROBATION_FRACTION) -> int:
    """Rows at the start of a series of ``length`` rows that are not scored."""
    return int(min(math.floor(fraction * length), fraction * PROBATION_MAX_ROWS_FACTOR))


def window_rows(
    timestamps: Sequence[float], windows: Sequence[tuple[float, float]]
) -> list[tuple[int, int]]:
    """Each ``(start, end)`` time window (inclusive) as ``(first_row, last_row)``.

    ``timestamps`` must be sorted. A window that holds no row is dropped (it cannot be
    detected by any detector, perfect included).
    """
    rows: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        left = bisect.bisect_left(timestamps, start)
        right = bisect.bisect_right(timestamps, end) - 1
        if right >= left:
            rows.append((left, right))
    return rows


@dataclass
class FileScore:
    """The score of one series under one profile, with its counts."""

    raw: float
    windows: int
    detected: int
    false_positives: int
    first_rows: list[int | None] = field(default_factory=list)
    """Per window, the row of its first detection (None if missed)."""
    null_weight: float = 1.0
    """The profile's fn weight: what each missed window costs."""
    perfect_each: float = 1.0
    """What a detection at a window's first row earns."""

    @property
    def null(self) -> float:
        """What the null detector would score here (it misses every window)."""
        return -self.null_weight * self.windows

    @property
    def perfect(self) -> float:
        """What the perfect detector would score here (every window at its first row)."""
        return self.perfect_each * self.windows


def score_file(
    length: int,
    detections: Sequence[int],
    windows: Sequence[tuple[int, int]],
    profile: Profile,
    *,
    probation: int | None = None,
) -> FileScore:
    """Score the detection rows of one series of ``length`` rows.

    ``windows`` are ``(first_row, last_row)`` pairs (see :func:`window_rows`), not
    overlapping; ``probation`` defaults to :func:`probation_rows` of ``length``.
    """
    skip = probation_rows(length) if probation is None else probation
    ordered = sorted(windows)
    first: list[int | None] = [None] * len(ordered)
    fp_cost = 0.0
    false_positives = 0
    lefts = [w[0] for w in ordered]
    for i in sorted(set(detections)):
        if i < skip or i >= length:
            continue
        k = bisect.bisect_right(lefts, i) - 1  # the last window starting at or before i
        if k >= 0 and i <= ordered[k][1]:
            if first[k] is None:
                first[k] = i
            continue
        false_positives += 1
        if k < 0:
            fp_cost -= profile.fp_weight
        else:
            left, right = ordered[k]
            y = (i - right) / max(right - left, 1)
            fp_cost += profile.fp_weight * scaled_sigmoid(y)
    tp = 0.0
    for (left, right), row in zip(ordered, first, strict=True):
        if row is None:
            tp -= profile.fn_weight
        else:
            width = right - left + 1
            tp += profile.tp_weight * scaled_sigmoid(-(right - row + 1) / width)
    return FileScore(
        raw=tp + fp_cost,
        windows=len(ordered),
        detected=sum(1 for r in first if r is not None),
        false_positives=false_positives,
        first_rows=first,
        null_weight=profile.fn_weight,
        perfect_each=profile.tp_weight * scaled_sigmoid(-1.0),
    )


def normalised(scores: Sequence[FileScore]) -> float:
    """100 × (raw - null) / (perfect - null) summed over ``scores``; 0 with no windows."""
    raw = math.fsum(s.raw for s in scores)
    null = math.fsum(s.null for s in scores)
    perfect = math.fsum(s.perfect for s in scores)
    if perfect <= null:
        return 0.0
    return 100.0 * (raw - null) / (perfect - null)


def score_corpus(
    files: Mapping[str, tuple[int, Sequence[int], Sequence[tuple[int, int]]]],
    profile: Profile,
) -> tuple[float, dict[str, FileScore]]:
    """Normalised score of a corpus ``{name: (length, detections, windows)}`` and per file."""
    per_file = {
        name: score_file(length, detections, windows, profile)
        for name, (length, detections, windows) in files.items()
    }
    return normalised(list(per_file.values())), per_file


__all__ = [
    "FileScore",
    "Profile",
    "load_profiles",
    "normalised",
    "probation_rows",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "window_rows",
]
