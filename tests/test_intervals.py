"""Accuracy intervals over questions (edge_kto/intervals.py): what the report and the ablation state."""

from __future__ import annotations

import numpy as np
import pytest

from edge_kto.intervals import accuracy_interval, paired_difference


def test_accuracy_interval_matches_a_numpy_percentile_bootstrap():
    rng = np.random.default_rng(1)
    correct = list(rng.random(200) < 0.45)
    acc, lo, hi = accuracy_interval(correct)
    assert acc == pytest.approx(np.mean(correct)) and lo < acc < hi
    idx = rng.integers(0, 200, size=(10_000, 200))
    ref_lo, ref_hi = np.percentile(np.asarray(correct, float)[idx].mean(axis=1), [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.01) and hi == pytest.approx(ref_hi, abs=0.01)
    # normal approximation of the width, sqrt(p(1-p)/n) * 1.96 * 2 ~ 13.8 points at p 0.45, n 200
    assert hi - lo == pytest.approx(2 * 1.96 * (acc * (1 - acc) / 200) ** 0.5, abs=0.01)
    assert accuracy_interval([True] * 10) == (1.0, 1.0, 1.0)


def test_paired_difference_is_in_points_averages_seeds_and_needs_matching_questions():
    same = [[True, False] * 50]
    assert paired_difference(same, same) == (0.0, 0.0, 0.0)
    # a wins 30 questions, loses 10, ties 160: +10 points, interval clear of 0
    a = [[True] * 30 + [False] * 10 + [True] * 80 + [False] * 80]
    b = [[False] * 30 + [True] * 10 + [True] * 80 + [False] * 80]
    mean, lo, hi = paired_difference(a, b)
    assert mean == pytest.approx(10.0) and 0 < lo < 10 < hi
    # two seeds: a question counts half when only one seed gets it right
    mean2, _, _ = paired_difference([[True, True], [False, True]], [[False, True], [False, True]])
    assert mean2 == pytest.approx(25.0)
    with pytest.raises(ValueError, match="same seeds and questions"):
        paired_difference([[True]], [[True, False]])
