"""What ``edge-kto data inspect`` reports: class balance, lengths, and KTO loss weights.

The KTO paper (arXiv 2402.01306, Eq. 8) recommends weights with
``lambda_D * n_D / (lambda_U * n_U)`` in ``[1, 4/3]``; :func:`kto_weight_range` turns the
class counts into the admissible range for each weight with the other held at 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .data import KTOExample, read_kto

EQ8_LOW, EQ8_HIGH = 1.0, 4.0 / 3.0


@dataclass
class WeightRange:
    """Admissible lambda_D (with lambda_U = 1) and lambda_U (with lambda_D = 1) under Eq. 8."""

    n_desirable: int
    n_undesirable: int
    desirable_weight: tuple[float, float] | None
    undesirable_weight: tuple[float, float] | None
    recommended: dict[str, float] | None

    def describe(self) -> str:
        if self.recommended is None:
            return "Eq. 8 cannot be met: one class is empty (KTO needs both desirable and undesirable rows)."
        lo, hi = self.desirable_weight  # type: ignore[misc]
        ulo, uhi = self.undesirable_weight  # type: ignore[misc]
        rec = self.recommended
        return (
            f"Eq. 8 (1 <= lambda_D*n_D / (lambda_U*n_U) <= 4/3): with lambda_U=1, lambda_D in [{lo:.3f}, {hi:.3f}]; "
            f"with lambda_D=1, lambda_U in [{ulo:.3f}, {uhi:.3f}]. "
            f"Recommended: desirable_weight={rec['desirable_weight']:.3f}, "
            f"undesirable_weight={rec['undesirable_weight']:.3f}"
        )


def kto_weight_range(n_desirable: int, n_undesirable: int) -> WeightRange:
    if n_desirable == 0 or n_undesirable == 0:
        return WeightRange(n_desirable, n_undesirable, None, None, None)
    ratio = n_undesirable / n_desirable
    d_range = (EQ8_LOW * ratio, EQ8_HIGH * ratio)
    u_range = (1 / (EQ8_HIGH * ratio), 1 / (EQ8_LOW * ratio))
    # Up-weight the minority class (weight >= 1) rather than shrinking the majority's gradient,
    # at the ratio-1 end of the range (what balanced data with both weights at 1 gives).
    if n_desirable <= n_undesirable:
        rec = {"desirable_weight": math.ceil(d_range[0] * 1e4) / 1e4, "undesirable_weight": 1.0}
    else:
        rec = {"desirable_weight": 1.0, "undesirable_weight": math.floor(u_range[1] * 1e4) / 1e4}
    return WeightRange(n_desirable, n_undesirable, d_range, u_range, rec)


def eq8_ratio(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float) -> float:
    return (desirable_weight * n_desirable) / max(undesirable_weight * n_undesirable, 1e-12)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=float)
    return {
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


@dataclass
class DatasetStats:
    path: str
    rows: int
    desirable: int
    undesirable: int
    sources: dict[str, int]
    length_unit: str
    prompt_lengths: dict[str, float]
    completion_lengths: dict[str, float]
    weights: WeightRange

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = [
            f"{self.path}: {self.rows} rows — desirable {self.desirable}, undesirable {self.undesirable}",
            "sources: " + (", ".join(f"{k}={v}" for k, v in sorted(self.sources.items())) or "-"),
            f"lengths in {self.length_unit}:   " + "  ".join(f"{k:>6}" for k in ("min", "p50", "p90", "p99", "max")),
        ]
        for name, d in (("prompt", self.prompt_lengths), ("completion", self.completion_lengths)):
            if d:
                lines.append(
                    f"  {name:<12}"
                    + " " * (len(self.length_unit) + 3)
                    + "  ".join(f"{d[k]:6.0f}" for k in ("min", "p50", "p90", "p99", "max"))
                )
        lines.append(self.weights.describe())
        return "\n".join(lines)


def dataset_stats(path: str | Path, count_tokens: Callable[[str], int] | None = None) -> DatasetStats:
    """Counts per class and source, length percentiles (tokens if ``count_tokens`` is given, else words)."""
    rows: list[KTOExample] = read_kto(path)
    count = count_tokens or (lambda s: len(s.split()))
    sources: dict[str, int] = {}
    for r in rows:
        sources[r.source or "unknown"] = sources.get(r.source or "unknown", 0) + 1
    n_d = sum(r.label for r in rows)
    return DatasetStats(
        path=str(path),
        rows=len(rows),
        desirable=n_d,
        undesirable=len(rows) - n_d,
        sources=sources,
        length_unit="tokens" if count_tokens else "words",
        prompt_lengths=_percentiles([count(" ".join(m["content"] for m in r.prompt)) for r in rows]),
        completion_lengths=_percentiles([count(r.completion) for r in rows]),
        weights=kto_weight_range(n_d, len(rows) - n_d),
    )
