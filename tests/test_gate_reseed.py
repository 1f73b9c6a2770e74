"""The gate's verdict is a property of the artifact, not of a coin flip: reseeding quantization-aware
finishing (seeds 0/1/2) on the small capitals task keeps the verdict of the shipped artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_kto.data import read_task
from edge_kto.export import ExportConfig, run_export
from edge_kto.finish import FinishConfig, run_finish

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals"


def _training_rows(tmp_path: Path) -> Path:
    """The task's training prompts answered right (desirable) and with another prompt's city (undesirable)."""
    task = read_task(TASK)
    rows = []
    for i, it in enumerate(task.train):
        wrong = task.train[(i + 1) % len(task.train)].reference[0]
        prompt = [{"role": "system", "content": task.system}, {"role": "user", "content": it.prompt}]
        for city, label in ((it.reference[0], True), (wrong, False)):
            rows.append(
                {
                    "id": f"{it.id}-{label}",
                    "prompt": prompt,
                    "completion": city,
                    "label": label,
                    "reference": it.reference,
                }
            )
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.real_model
def test_reseeding_finishing_keeps_the_verdict_of_the_shipped_artifact(tmp_path, smol):
    rows = _training_rows(tmp_path)
    verdicts, paired = [], []
    for seed in (0, 1, 2):
        fin = tmp_path / f"finish{seed}"
        run_finish(
            FinishConfig(
                source=str(smol.hf_dir),
                data=str(rows),
                out=str(fin),
                steps=4,
                batch_size=4,
                lr=2e-5,
                max_length=128,
                seed=seed,
            ),
            progress=False,
        )
        res = run_export(
            ExportConfig(
                source=str(fin),
                out=str(tmp_path / f"bundle{seed}"),
                gguf=["Q4_0"],
                onnx=False,
                golden_data=str(TASK),
                golden_limit=10,
                golden_train_limit=10,  # the training prompts too: 20 paired answers
                golden_max_new_tokens=12,
                thresholds={"task_margin": 0.25},  # what 20 prompts can show (paired.prompts_needed)
            ),
            progress=False,
        )
        r = res.manifest["alignment"]["per_artifact"]["model-q4_0.gguf"]
        assert r["paired_exported"]["n"] == r["paired_student"]["n"] == 20  # both references, every prompt
        assert res.manifest["golden"]["train_rows"] == 10
        verdicts.append(r["task_verdict"])
        paired.append((r["paired_exported"]["lost"], r["paired_exported"]["gained"], r["task_acc"]))
    assert len(set(verdicts)) == 1, (verdicts, paired)
    assert verdicts[0] == "pass", paired
