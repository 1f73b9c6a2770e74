"""The gate's task-accuracy decision: an artifact's answers against its reference's, prompt by prompt.

Both answer the same golden prompts, so each prompt is a pair (reference right?, artifact right?).
Pairs where both agree say nothing about a difference; the *discordant* ones do: **lost**
(reference right, artifact wrong) and **gained**. The net change in accuracy is
``(gained - lost) / n``, and its 95% interval is Newcombe's square-and-add interval for paired
proportions (Newcombe 1998, Statistics in Medicine 17:2635, method 10; Fagerland, Lydersen & Laake
2014 recommend it): Wilson score intervals for the two accuracies, combined through the correlation
of the pairs. Unlike a Wald or bootstrap interval it does not collapse to ``[0, 0]`` when ten
prompts happen to show no discordant pair.

The verdict, for a margin ``δ`` (accuracy points the artifact may lose; ``Thresholds.task_margin``):

- **pass**: the interval's lower end is ``>= -δ`` -- a loss larger than the margin is ruled out
  (non-inferiority shown at 95%);
- **fail**: not pass, and the upper end is ``< 0`` -- a loss is shown;
- **inconclusive**: neither -- too few golden prompts (or too many discordant ones) to tell.

Power: with a share ``p_d`` of discordant prompts and no true loss the interval's half-width is about
``1.96 * sqrt(p_d / n)``, so showing non-inferiority needs about ``3.84 * p_d / δ²`` prompts
(:func:`prompts_needed` gives the exact count for this interval).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Z95 = 1.959963984540054  # two-sided 95%
VERDICTS = ("pass", "inconclusive", "fail")


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_interval(both: int, lost: int, gained: int, neither: int, z: float = Z95) -> tuple[float, float]:
    """Interval of (artifact accuracy - reference accuracy) from the four cells of the paired table."""
    n = both + lost + gained + neither
    if n == 0:
        return -1.0, 1.0
    ref_ok, art_ok = both + lost, both + gained
    p_ref, p_art = ref_ok / n, art_ok / n
    l_ref, u_ref = wilson(ref_ok, n, z)
    l_art, u_art = wilson(art_ok, n, z)
    margins = (ref_ok, n - ref_ok, art_ok, n - art_ok)
    psi = 0.0
    if all(margins):
        a = both * neither - lost * gained
        # Newcombe's correction: a positive association is shrunk by n/2 (continuity), a negative one kept
        psi = (a - n / 2 if a > n / 2 else min(a, 0)) / math.sqrt(math.prod(margins))
    d = p_art - p_ref
    lo = d - math.sqrt(
        max((p_art - l_art) ** 2 + (u_ref - p_ref) ** 2 - 2 * psi * (p_art - l_art) * (u_ref - p_ref), 0)
    )
    hi = d + math.sqrt(
        max((u_art - p_art) ** 2 + (p_ref - l_ref) ** 2 - 2 * psi * (u_art - p_art) * (p_ref - l_ref), 0)
    )
    return max(-1.0, lo), min(1.0, hi)


def paired_verdict(reference_ok: Sequence[bool], artifact_ok: Sequence[bool], margin: float) -> dict:
    """Lost / gained / net with its interval and the verdict (module docstring) for one artifact."""
    if len(reference_ok) != len(artifact_ok):
        raise ValueError(f"paired answers: {len(reference_ok)} reference vs {len(artifact_ok)} artifact verdicts")
    cells = {"both": 0, "lost": 0, "gained": 0, "neither": 0}
    for r, a in zip(reference_ok, artifact_ok):
        cells["both" if r and a else "lost" if r else "gained" if a else "neither"] += 1
    n = len(reference_ok)
    lo, hi = paired_interval(**cells)
    verdict = "pass" if lo >= -margin else "fail" if hi < 0 else "inconclusive"
    return {
        "n": n,
        "lost": cells["lost"],
        "gained": cells["gained"],
        "net": cells["gained"] - cells["lost"],
        "diff": (cells["gained"] - cells["lost"]) / n if n else 0.0,
        "interval": [round(lo, 6), round(hi, 6)],
        "margin": margin,
        "verdict": verdict,
    }


def prompts_needed(margin: float, discordant_rate: float, accuracy: float = 0.6, z: float = Z95) -> int:
    """Golden prompts that show non-inferiority at ``margin`` when a share ``discordant_rate`` of the
    answers change, evenly both ways, and the reference answers ``accuracy`` of them right: the
    smallest such ``n`` for the interval above (about ``z² * discordant_rate / margin²``)."""
    if margin <= 0 or not 0 <= discordant_rate <= 1:
        raise ValueError("margin must be > 0 and discordant_rate in [0, 1]")

    def passes(n: int) -> bool:
        half = round(n * discordant_rate / 2)
        both = min(max(round(n * accuracy) - half, 0), n - 2 * half)
        return paired_interval(both, half, half, n - 2 * half - both, z)[0] >= -margin

    n = max(1, math.floor(z * z * discordant_rate / margin**2 / 2))
    while not passes(n):
        n = n + max(1, n // 50)
    while n > 1 and passes(n - 1):
        n -= 1
    return n


def paired_table(results: list[dict[str, Any]]) -> str:
    """Per artifact and reference: prompts lost / gained, the net change with its 95% interval, the verdict."""
    rows = [
        (r["artifact"], ref, p)
        for r in results
        for ref, p in (("weights it stores", r.get("paired_exported")), ("fp student", r.get("paired_student")))
        if p is not None
    ]
    if not rows:
        return ""
    lines = [
        "",
        f"Task accuracy, paired over the golden prompts (margin {rows[0][2]['margin']:.1%}; "
        "pass: a larger loss is ruled out at 95%, fail: a loss is shown, else inconclusive):",
        "",
        "| artifact | reference | prompts | lost | gained | net | 95% interval | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for art, ref, p in rows:
        lo, hi = p["interval"]
        lines.append(
            f"| {art} | {ref} | {p['n']} | {p['lost']} | {p['gained']} | {p['diff']:+.1%} | "
            f"[{lo:+.1%}, {hi:+.1%}] | {p['verdict']} |"
        )
    verdicts = [f"`{r['artifact']}`: **{r['task_verdict']}**" for r in results if r.get("task_verdict")]
    return (
        "\n".join(lines)
        + "\n\nTask verdict (the stored weights' own; a loss shown against the fp student fails it): "
        + ", ".join(verdicts)
        + "\n"
    )
