"""The gate's paired task-accuracy decision (edge_kto_runtime.paired) and the selection that falls
through to the next candidate (edge_kto.export.select)."""

from __future__ import annotations

import random

import pytest

from edge_kto.export.select import choose, shipping_order
from edge_kto_runtime.paired import paired_interval, paired_verdict, prompts_needed


def _pairs(lost: int, gained: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    ref = [True] * lost + [False] * gained + [True] * both + [False] * neither
    art = [False] * lost + [True] * gained + [True] * both + [False] * neither
    return ref, art


def test_a_known_loss_fails():
    """The demo's ONNX int4 (int8 activations) against the weights it stores: 18 lost, 3 gained of 200."""
    v = paired_verdict(*_pairs(18, 3, 100, 79), margin=0.05)
    assert (v["lost"], v["gained"], v["net"], v["n"]) == (18, 3, -15, 200)
    assert v["interval"][1] < 0 and v["verdict"] == "fail"


def test_no_loss_on_enough_prompts_passes():
    """Q4_0-like: a few answers change both ways; 360 prompts rule out a 5-point (and a 3-point) loss."""
    for margin in (0.05, 0.03):
        v = paired_verdict(*_pairs(13, 14, 200, 133), margin=margin)
        assert v["verdict"] == "pass" and v["interval"][0] >= -margin


@pytest.mark.parametrize("n", [4, 10, 30])
def test_too_few_prompts_is_the_third_verdict_even_with_no_change(n):
    """Ten identical answers prove nothing: the interval stays wide (a bootstrap would give [0, 0])."""
    v = paired_verdict(*_pairs(0, 0, n // 2, n - n // 2), margin=0.05)
    assert v["verdict"] == "inconclusive" and v["interval"][0] < -0.05 < 0 < v["interval"][1]


def test_a_small_shown_loss_within_the_margin_passes_and_beyond_it_fails():
    within = paired_verdict(*_pairs(12, 2, 600, 386), margin=0.05)  # -1 point, interval inside (-5, 0)
    assert within["interval"][1] < 0 and within["verdict"] == "pass"
    beyond = paired_verdict(*_pairs(12, 2, 600, 386), margin=0.005)
    assert beyond["verdict"] == "fail"


def test_the_interval_is_antisymmetric_and_bounded():
    lo, hi = paired_interval(both=50, lost=7, gained=2, neither=41)
    lo2, hi2 = paired_interval(both=50, lost=2, gained=7, neither=41)
    assert lo == pytest.approx(-hi2) and hi == pytest.approx(-lo2)
    assert -1.0 <= paired_interval(0, 30, 0, 0)[0] < paired_interval(0, 30, 0, 0)[1] <= 0


@pytest.mark.parametrize("n,discordant,acc", [(50, 0.2, 0.5), (200, 0.075, 0.57), (120, 0.1, 0.8)])
def test_the_interval_covers_a_zero_difference_about_95_percent_of_the_time(n, discordant, acc):
    """Coverage by simulation, 2,000 golden sets each: no true difference, answers flip both ways."""
    rng, covered, sims = random.Random(n), 0, 2000
    for _ in range(sims):
        ref, art = [], []
        for _ in range(n):
            u = rng.random()
            if u < discordant:
                first = u < discordant / 2
                ref.append(first)
                art.append(not first)
            else:
                ok = rng.random() < acc
                ref.append(ok)
                art.append(ok)
        lo, hi = paired_verdict(ref, art, 0.05)["interval"]
        covered += lo <= 0 <= hi
    assert 0.93 <= covered / sims <= 0.985


def test_prompts_needed_is_the_smallest_count_that_passes():
    """The power table in the docs: prompts needed at a margin when a share of answers flips evenly."""
    need = prompts_needed(0.05, 0.1, accuracy=0.6)
    assert 3.84 * 0.1 / 0.05**2 * 0.9 < need < 3.84 * 0.1 / 0.05**2 * 1.2  # near the normal approximation

    def verdict(n: int) -> str:
        half = round(n * 0.05)
        both = round(n * 0.6) - half
        return paired_verdict(*_pairs(half, half, both, n - 2 * half - both), margin=0.05)["verdict"]

    assert verdict(need) == "pass" and verdict(need // 2) == "inconclusive"
    assert prompts_needed(0.03, 0.1) > prompts_needed(0.05, 0.1) > prompts_needed(0.05, 0.05)


def test_unequal_answer_lists_are_refused():
    with pytest.raises(ValueError, match="3 reference vs 2 artifact"):
        paired_verdict([True] * 3, [True] * 2, 0.05)


def _art(path: str, backend: str, mb: float) -> dict:
    return {"path": path, "backend": backend, "bytes": int(mb * 1e6)}


def _per(passed: bool, tps: float = 10.0, verdict: str | None = None, retention: float = 1.0) -> dict:
    return {
        "passed": passed,
        "decode_tokens_per_s": tps,
        "task_verdict": verdict or ("pass" if passed else "fail"),
        "task_retention": retention,
    }


def test_selection_falls_through_to_the_next_candidate_when_the_first_fails():
    arts = [
        _art("q4_0.gguf", "llama.cpp", 100),
        _art("iq4_nl.gguf", "llama.cpp", 101.5),
        _art("q8.gguf", "llama.cpp", 180),
    ]
    per = {"q4_0.gguf": _per(False), "iq4_nl.gguf": _per(True), "q8.gguf": _per(True)}
    assert [a["path"] for a in choose(arts, per)] == ["iq4_nl.gguf"]
    per["q4_0.gguf"] = _per(True)
    assert [a["path"] for a in choose(arts, per)] == ["q4_0.gguf"]


def test_candidates_of_the_same_size_are_tried_fastest_first():
    """ONNX int4 at accuracy level 4 and level 1 store the same bytes; the one that decodes faster here goes first."""
    arts = [_art("onnx-int4-acc1/", "onnxruntime-genai", 120.0), _art("onnx-int4/", "onnxruntime-genai", 120.4)]
    per = {"onnx-int4-acc1/": _per(True, tps=40.0), "onnx-int4/": _per(True, tps=55.0)}
    assert [a["path"] for a in shipping_order(arts, per)] == ["onnx-int4/", "onnx-int4-acc1/"]
    assert [a["path"] for a in choose(arts, per)] == ["onnx-int4/"]
    per["onnx-int4/"] = _per(False, tps=55.0)  # level 4 loses answers: level 1 ships
    assert [a["path"] for a in choose(arts, per)] == ["onnx-int4-acc1/"]


def test_with_no_passing_candidate_an_inconclusive_one_is_kept_before_a_failed_one_per_format():
    arts = [_art("a.gguf", "llama.cpp", 100), _art("b.gguf", "llama.cpp", 110), _art("x/", "onnxruntime-genai", 90)]
    per = {
        "a.gguf": _per(False, verdict="fail", retention=0.99),
        "b.gguf": _per(False, verdict="inconclusive", retention=0.95),
        "x/": _per(True),
    }
    assert [a["path"] for a in choose(arts, per)] == ["b.gguf", "x/"]
