"""The generate stage: provenance, teacher-only context, and resume after kill -9."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import kill_after_lines, write_jsonl

from edge_kto.generate import GenerateConfig, run_generate
from edge_kto.teacher import SamplingParams, TeacherConfig


def _task(tmp_path, n=3):
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.json").write_text(
        json.dumps(
            {
                "name": "demo",
                "teacher_context": "SECRET-KNOWLEDGE: the reset code is 4417.",
                "system": "You are a support bot.",
                "verifier": "contains_all",
            }
        )
    )
    write_jsonl(
        task / "train.jsonl", [{"id": f"q{i}", "prompt": f"Question {i}?", "reference": ["4417"]} for i in range(n)]
    )
    write_jsonl(task / "eval.jsonl", [{"id": "e0", "prompt": "Eval question?", "reference": ["4417"]}])
    return task


@pytest.mark.integration
def test_generate_from_task_folder_keeps_provenance_and_hides_context(tmp_path, tiny_model_dir):
    out = tmp_path / "candidates.jsonl"
    cfg = GenerateConfig(
        prompts=str(_task(tmp_path)),
        out=str(out),
        teacher=TeacherConfig(kind="hf", model=str(tiny_model_dir), batch_size=2, name="tiny"),
        sampling=SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=3),
        progress=False,
    )
    res = run_generate(cfg)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert (res.written, res.skipped, res.prompts) == (6, 0, 3)
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}#{k}" for i in range(3) for k in range(2))
    r = rows[0]
    assert r["source"] == "teacher:tiny" and r["verifier"] == "contains_all" and r["reference"] == ["4417"]
    assert r["sampling"] == {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 6, "seed": 3}
    assert r["prompt"][0] == {"role": "system", "content": "You are a support bot."}
    assert "SECRET" not in json.dumps(r["prompt"]), "teacher_context must never reach the student's prompt"
    again = run_generate(cfg)
    assert (again.written, again.skipped) == (0, 6)
    # A run killed after its last answer but before putting the file in prompt order: the rerun
    # has nothing to generate and still leaves the file in order.
    in_order = out.read_text()
    out.write_text("".join(reversed(in_order.splitlines(keepends=True))))
    assert (run_generate(cfg).written, out.read_text()) == (0, in_order)


@pytest.mark.real_model
def test_generate_resumes_after_kill9_without_duplicates_or_losses(tmp_path, smol):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"id": f"p{i}", "prompt": f"Write one sentence about the number {i}."} for i in range(12)],
    )
    out = tmp_path / "cands.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "edge_kto.cli",
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--kind",
        "gguf",
        "--model",
        str(smol.gguf),
        "-n",
        "2",
        "--max-new-tokens",
        "24",
        "--threads",
        "2",
        "--seed",
        "7",
    ]
    kill_after_lines(cmd, out, 5)
    before = out.read_bytes()
    done_before = before.count(b"\n")
    assert 5 <= done_before < 24, f"kill should land mid-run (had {done_before} rows)"

    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = out.read_bytes()
    lines = set(after.splitlines())
    assert all(line in lines for line in before.splitlines()[:done_before]), "rows written before the kill are kept"
    rows = [json.loads(x) for x in after.decode().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24
    assert ids == [f"p{i}#{k}" for i in range(12) for k in range(2)], "the finished file is in prompt order"
    # Exact: the resumed file is the file an uninterrupted run writes (each answer depends only on
    # its prompt and seed, not on what the batch held when it was decoded).
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run([*cmd[:6], str(fresh), *cmd[7:]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert fresh.read_bytes() == after
    assert all(r["completion"] for r in rows)
