"""NAB scoring (bench/nab_scoring.py) pinned on small hand-computed cases.

The scaled sigmoid 2 / (1 + e^(5y)) - 1 equals -tanh(2.5 y), which gives the hand values
below. No test reads the recorded data set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.nab_scoring import (
    Profile,
    load_profiles,
    normalised,
    probation_rows,
    scaled_sigmoid,
    score_corpus,
    score_file,
    window_rows,
)

STANDARD = Profile("standard", tp_weight=1.0, fn_weight=1.0, fp_weight=0.11)
LOW_FN = Profile("reward_low_FN_rate", tp_weight=1.0, fn_weight=2.0, fp_weight=0.11)
WINDOW = (50, 59)  # ten rows of a 100-row series; the first 15 rows are probationary


def test_scaled_sigmoid_rewards_early_and_penalises_late() -> None:
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(-1.0) == pytest.approx(math.tanh(2.5))  # 0.98661
    assert scaled_sigmoid(-0.1) == pytest.approx(math.tanh(0.25))  # 0.24492
    assert scaled_sigmoid(1.0) == pytest.approx(-math.tanh(2.5))
    assert scaled_sigmoid(3.5) == -1.0


def test_probationary_period_is_15_percent_capped_at_750_rows() -> None:
    assert probation_rows(100) == 15
    assert probation_rows(4032) == 604
    assert probation_rows(16000) == 750


def test_detection_at_window_start_earns_almost_one_and_at_its_end_little() -> None:
    early = score_file(100, [50], [WINDOW], STANDARD)
    late = score_file(100, [59], [WINDOW], STANDARD)
    assert early.raw == pytest.approx(math.tanh(2.5))
    assert late.raw == pytest.approx(math.tanh(0.25))
    assert (early.detected, early.false_positives) == (1, 0)


def test_only_the_first_detection_in_a_window_counts() -> None:
    score = score_file(100, [55, 50, 57], [WINDOW], STANDARD)
    assert score.raw == pytest.approx(math.tanh(2.5))
    assert score.first_rows == [50]
    assert score.false_positives == 0


def test_a_missed_window_costs_the_profiles_fn_weight() -> None:
    assert score_file(100, [], [WINDOW], STANDARD).raw == -1.0
    assert score_file(100, [], [WINDOW], LOW_FN).raw == -2.0


def test_false_positive_before_any_window_costs_the_full_fp_weight() -> None:
    score = score_file(100, [20, 50], [WINDOW], STANDARD)
    assert score.raw == pytest.approx(math.tanh(2.5) - 0.11)
    assert score.false_positives == 1


def test_false_positive_after_a_window_is_weighed_by_its_distance() -> None:
    # y = (i - right) / (width - 1): one window-width past the end costs nearly the full fp,
    # the row just after it much less.
    far = score_file(100, [50, 68], [WINDOW], STANDARD)
    near = score_file(100, [50, 60], [WINDOW], STANDARD)
    assert far.raw == pytest.approx(math.tanh(2.5) - 0.11 * math.tanh(2.5))
    assert near.raw == pytest.approx(math.tanh(2.5) - 0.11 * math.tanh(2.5 / 9))
    very_far = score_file(100, [99], [WINDOW], STANDARD)  # y = 40 / 9 > 3
    assert very_far.raw == pytest.approx(-1.0 - 0.11)


def test_detections_in_the_probationary_period_are_not_scored() -> None:
    score = score_file(100, [3, 14], [WINDOW], STANDARD)
    assert score.false_positives == 0
    assert score.raw == -1.0
    assert score_file(100, [15], [], STANDARD).raw == pytest.approx(-0.11)


def test_normalisation_null_is_zero_perfect_is_hundred() -> None:
    perfect = score_file(100, [50], [WINDOW], STANDARD)
    null = score_file(100, [], [WINDOW], STANDARD)
    assert normalised([perfect]) == pytest.approx(100.0)
    assert normalised([null]) == pytest.approx(0.0)
    # One window found at its start, one missed: exactly halfway.
    assert normalised([perfect, null]) == pytest.approx(50.0)
    # A series without windows only adds its false positives.
    noisy = score_file(100, [20, 30], [], STANDARD)
    expected = 100 * (math.tanh(2.5) - 0.22 + 1) / (math.tanh(2.5) + 1)
    assert normalised([perfect, noisy]) == pytest.approx(expected)


def test_score_corpus_scores_each_file_and_the_whole() -> None:
    total, per_file = score_corpus(
        {"a.csv": (100, [50], [WINDOW]), "b.csv": (100, [], [WINDOW])}, LOW_FN
    )
    assert total == pytest.approx(100 * (math.tanh(2.5) - 2 + 4) / (2 * math.tanh(2.5) + 4))
    assert per_file["b.csv"].raw == -2.0


def test_window_rows_maps_time_windows_to_inclusive_row_spans() -> None:
    ts = [0.0, 10.0, 20.0, 30.0]
    assert window_rows(ts, [(5.0, 20.0)]) == [(1, 2)]
    assert window_rows(ts, [(0.0, 30.0)]) == [(0, 3)]
    assert window_rows(ts, [(21.0, 29.0)]) == []  # holds no row


def test_load_profiles_reads_nab_cost_matrices(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    matrix = {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}
    path.write_text(json.dumps({"reward_low_FN_rate": {"CostMatrix": matrix}}))
    assert load_profiles(path) == {"reward_low_FN_rate": LOW_FN}
