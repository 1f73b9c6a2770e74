"""The real SmolLM2-135M-Instruct through `edge-kto generate` and `edge-kto label` (CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import write_jsonl

pytestmark = pytest.mark.real_model


def _cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "edge_kto.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_generate_and_label_on_real_smollm2(tmp_path, smol):
    task = tmp_path / "capitals"
    task.mkdir()
    (task / "task.json").write_text(
        json.dumps(
            {
                "name": "capitals",
                "verifier": "contains_all",
                "system": "Answer in one short sentence.",
                "teacher_context": "Reference facts: France -> Paris; Japan -> Tokyo; Italy -> Rome; Egypt -> Cairo.",
            }
        )
    )
    qs = [
        ("fr", "What is the capital of France?", "Paris"),
        ("jp", "What is the capital of Japan?", "Tokyo"),
        ("it", "What is the capital of Italy?", "Rome"),
        ("eg", "What is the capital of Egypt?", "Cairo"),
    ]
    write_jsonl(task / "train.jsonl", [{"id": i, "prompt": q, "reference": [a]} for i, q, a in qs])
    write_jsonl(
        task / "eval.jsonl", [{"id": "de", "prompt": "Which city is Germany's capital?", "reference": ["Berlin"]}]
    )

    cands, kto = tmp_path / "candidates.jsonl", tmp_path / "kto.jsonl"
    out = _cli(
        "generate",
        str(task),
        "--out",
        str(cands),
        "--kind",
        "gguf",
        "--model",
        str(smol.gguf),
        "-n",
        "3",
        "--temperature",
        "0.9",
        "--max-new-tokens",
        "32",
        "--threads",
        "2",
    )
    assert "wrote 12 samples" in out
    rows = [json.loads(x) for x in cands.read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert all("Reference facts" not in json.dumps(r["prompt"]) for r in rows)

    out = _cli(
        "label",
        str(cands),
        "--out",
        str(kto),
        "--student",
        str(smol.hf_dir),
        "--student-n",
        "1",
        "--max-new-tokens",
        "24",
    )
    labeled = [json.loads(x) for x in kto.read_text().splitlines()]
    summary = json.loads(kto.with_suffix(".summary.json").read_text())
    assert summary["rows"] == len(labeled) >= 8
    assert summary["desirable"] >= 4, "SmolLM2 knows these capitals; most samples should pass the verifier"
    assert {"teacher:gguf:" + str(smol.gguf), "student"} <= set(summary["by_source"])
    assert all(r["label"] == all(a.lower() in r["completion"].lower() for a in r["reference"]) for r in labeled)

    stats = _cli("data", "inspect", str(kto), "--tokenizer", str(smol.hf_dir))
    assert "lengths in tokens" in stats and "Eq. 8" in stats
