"""Rejection sampling (generate's coverage): which samples a prompt gets, decided from verdicts alone;
reference-guided samples for prompts with none; resume after kill -9 to the same file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_after_lines

from edge_kto.data import PromptItem
from edge_kto.generate import CoverageConfig, GenerateConfig, _Job, reference_hint, run_generate
from edge_kto.teacher.base import SamplingParams

TASKS = Path(__file__).parent.parent / "edge_kto" / "tasks"


def _items() -> list[PromptItem]:
    return [
        PromptItem("easy", "capital of France?", ["Paris"], "france"),
        PromptItem("late", "capital of Japan?", ["Tokyo"], "japan"),
        PromptItem("never", "capital of Peru?", ["Lima"], "peru"),
    ]


def _drive(cov: CoverageConfig, answer, n: int = 2, rows: list | None = None) -> tuple[list, _Job]:
    """Run the scheduler to completion; ``answer(prompt_id, k, guided)`` is the teacher's text."""
    cfg = GenerateConfig(prompts="-", sampling=SamplingParams(n=n), coverage=cov)
    job = _Job(cfg, _items(), None, "facts", "contains_all", rows or [])
    asked = []
    while pending := job.pending():
        asked.append({it.id: list(req.sample_indices) for it, req in pending})
        for it, req in pending:
            for k in req.sample_indices:
                guided = k >= job.guided_from
                job.add(
                    {
                        "prompt_id": it.id,
                        "sample_index": k,
                        "completion": answer(it.id, k, guided),
                        "reference": it.reference,
                    }
                )
    return asked, job


def _teacher(pid: str, k: int, guided: bool) -> str:
    if pid == "easy":
        return "Paris."
    if pid == "late":
        return "Tokyo." if k == 5 else "Kyoto."
    return "Lima." if guided else "Cusco."


def test_the_budget_goes_where_answers_are_missing_doubling_up_to_max_samples():
    asked, job = _drive(CoverageConfig(accepted=1, max_samples=8, guided=2), _teacher)
    assert asked == [
        {"easy": [0, 1], "late": [0, 1], "never": [0, 1]},
        {"late": [2, 3], "never": [2, 3]},
        {"late": [4, 5, 6, 7], "never": [4, 5, 6, 7]},
        {"never": [8, 9]},  # guided: from max_samples on
    ]
    c = job.coverage()
    assert (c["covered_unguided"], c["covered"], c["samples"]) == (2, 3, 2 + 8 + 10)
    assert c["by_intent"]["peru"] == {"covered": 1, "prompts": 1}


def test_off_by_default_and_guided_alone_follows_the_first_round():
    asked, job = _drive(CoverageConfig(), _teacher)
    assert asked == [{"easy": [0, 1], "late": [0, 1], "never": [0, 1]}]
    assert job.coverage()["covered"] == 1
    asked, _ = _drive(CoverageConfig(guided=1), _teacher)
    assert asked[1] == {"late": [16], "never": [16]}  # guided indices start at max_samples


def test_a_resumed_schedule_asks_for_what_an_uninterrupted_one_would():
    cov = CoverageConfig(accepted=1, max_samples=8, guided=2)
    full, _ = _drive(cov, _teacher)
    everything = [(pid, k) for rnd in full for pid, ks in rnd.items() for k in ks]
    for cut in range(len(everything)):  # killed after any number of finished samples, in any round
        rows = [
            {"prompt_id": p, "sample_index": k, "completion": _teacher(p, k, k >= 8), "reference": None}
            for p, k in everything[:cut]
        ]
        for r in rows:
            r["reference"] = next(it.reference for it in _items() if it.id == r["prompt_id"])
        asked, _ = _drive(cov, _teacher, rows=rows)
        rest = [(pid, k) for rnd in asked for pid, ks in rnd.items() for k in ks]
        assert sorted(everything[:cut] + rest) == sorted(everything), cut


def test_reference_hint_names_every_phrase():
    assert reference_hint(["Profile > Security", "15 minutes"]).endswith("Profile > Security; 15 minutes.")
    assert reference_hint(42) == "The correct answer is: 42"


def test_coverage_needs_a_verifier_and_sane_numbers(tmp_path):
    from edge_kto_runtime.errors import InvalidInput

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    with pytest.raises(InvalidInput, match="needs a task folder"):
        run_generate(GenerateConfig(str(prompts), str(tmp_path / "o.jsonl"), coverage=CoverageConfig(accepted=1)))
    with pytest.raises(InvalidInput, match="max_samples: 2 is below"):
        run_generate(
            GenerateConfig(
                str(TASKS / "capitals"),
                str(tmp_path / "o.jsonl"),
                sampling=SamplingParams(n=4),
                coverage=CoverageConfig(accepted=1, max_samples=2),
            )
        )
    with pytest.raises(InvalidInput, match="accepted: must be a whole number"):
        CoverageConfig(accepted=-1).validate()
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.real_model
def test_rejection_sampling_resumes_after_kill9_to_the_uninterrupted_file(tmp_path, smol):
    out = tmp_path / "cands.jsonl"
    cmd = [
        sys.executable, "-m", "edge_kto.cli", "generate", str(TASKS / "capitals"), "--out", str(out),
        "--kind", "gguf", "--model", str(smol.gguf), "-n", "1", "--max-new-tokens", "16", "--threads", "2",
        "--seed", "3", "--accepted", "2", "--max-samples", "4", "--guided", "1", "--quiet",
    ]  # fmt: skip
    kill_after_lines(cmd, out, 12)
    before = out.read_bytes().splitlines()
    assert len(before) >= 12
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(line in out.read_bytes().splitlines() for line in before)  # nothing written before is lost
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) > len(before)
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run([*cmd[:6], str(fresh), *cmd[7:]], check=True, capture_output=True)
    assert fresh.read_bytes() == out.read_bytes()
    assert "coverage:" in done.stdout
    guided = [r for r in rows if r.get("guided")]
    assert all(r["sample_index"] >= 4 for r in guided)
    per = {}
    for r in rows:
        per.setdefault(r["prompt_id"], []).append(r["sample_index"])
    assert all(sorted(ks)[: min(len(ks), 1)] == [0] for ks in per.values())
