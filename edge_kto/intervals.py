"""Accuracy with its uncertainty: 95% percentile-bootstrap intervals over questions.

One eval question is 1/N of the accuracy (1.25 points at N = 80, 0.5 at 200), so a difference
between two models is a claim only when its interval excludes 0. Both intervals resample the
*questions* (seeded, 10,000 resamples): the accuracy of one model, and the paired difference of two
models answered on the same questions. Several training seeds enter the paired difference as the
per-question difference averaged over seeds: seed noise enters through those averages, but the seeds
themselves are not resampled, so when seeds disagree the interval is narrower than one over seeds.
"""

from __future__ import annotations

import random
from typing import Sequence

RESAMPLES = 10_000


def _bootstrap_mean(per_q: Sequence[float], n: int, seed: int) -> tuple[float, float, float]:
    q = len(per_q)
    if q == 0:
        raise ValueError("an interval over no questions")
    rng = random.Random(seed)
    means = sorted(sum(per_q[rng.randrange(q)] for _ in range(q)) / q for _ in range(n))
    return sum(per_q) / q, means[int(0.025 * n)], means[int(0.975 * n) - 1]


def accuracy_interval(correct: Sequence[bool], n: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(accuracy, low, high) as fractions: one model's per-question verdicts."""
    return _bootstrap_mean([float(c) for c in correct], n, seed)


def paired_difference(
    a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], n: int = RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high) of accuracy a - b in points; ``a`` and ``b`` are per seed, per question, the
    same questions in the same order (a single model: one seed)."""
    if len(a) != len(b) or any(len(x) != len(a[0]) for x in (*a, *b)):
        raise ValueError("paired_difference needs the same seeds and questions on both sides")
    per_q = [sum(int(x[i]) - int(y[i]) for x, y in zip(a, b)) / len(a) for i in range(len(a[0]))]
    mean, lo, hi = _bootstrap_mean(per_q, n, seed)
    return 100 * mean, 100 * lo, 100 * hi
