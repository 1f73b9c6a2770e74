"""Latency statistics with one definition everywhere (the Android core's tests read the same fixtures).

Percentiles: linear interpolation between closest ranks — numpy's default (``method="linear"``,
Hyndman & Fan type 7): for sorted x of length n, rank h = (n - 1) * q / 100, value
x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h]).

The p99 interval is a percentile bootstrap: resample the runs with replacement (seeded), take
the p99 of each resample, report the 2.5th and 97.5th percentiles of those.
"""

from __future__ import annotations

import math
import random
from typing import Sequence


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        raise ValueError("percentile of no values")
    s = sorted(xs)
    h = (len(s) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def bootstrap_ci(
    xs: Sequence[float], q: float = 99.0, n_boot: int = 2000, seed: int = 0, level: float = 95.0
) -> tuple[float, float]:
    rng = random.Random(seed)
    n = len(xs)
    stats = sorted(percentile([xs[rng.randrange(n)] for _ in range(n)], q) for _ in range(n_boot))
    tail = (100.0 - level) / 2
    return percentile(stats, tail), percentile(stats, 100.0 - tail)


def summarize(xs: Sequence[float], ci: bool = True, seed: int = 0) -> dict[str, float | list[float] | int]:
    """min, mean, stddev (sample, n-1), p50, p90, p99, max, and the bootstrap 95% interval of p99."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    out: dict[str, float | list[float] | int] = {
        "n": n,
        "min": min(xs),
        "mean": mean,
        "stddev": sd,
        "p50": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "max": max(xs),
    }
    if ci and n > 1:
        out["p99_ci95"] = list(bootstrap_ci(xs, 99.0, seed=seed))
    return out


def drift(xs: Sequence[float]) -> float | None:
    """Median of the last decile of runs over the median of the first (> 1: slowing down, e.g. thermal throttling)."""
    k = len(xs) // 10
    if k < 1:
        return None
    return percentile(list(xs[-k:]), 50) / percentile(list(xs[:k]), 50)


def min_runs_for(q: float) -> int:
    """Fewest runs for the q-th percentile to rest on at least one observation beyond it."""
    return math.ceil(100.0 / (100.0 - q))
