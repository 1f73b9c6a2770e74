"""``edge-kto run``: every stage on a second task folder (any task in the format plugs in), the
report, stage caching, and a kill mid-train resuming without redoing generation or labeling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals"


def _yaml(tmp_path: Path, tiny: Path, **train) -> Path:
    t = {"max_steps": 6, "batch_size": 4, "lr": 0.001, "save_steps": 2, "max_length": 192, **train}
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"""
name: capitals-test
task: {TASK}
out: {tmp_path / "run"}
student: {tiny}
teacher: {{kind: gguf, model: smollm2-135m-instruct, n_threads: 2}}
generate: {{n: 2, temperature: 0.5, max_new_tokens: 12}}
generate_eval: {{n: 2, temperature: 0.5, max_new_tokens: 12}}
label: {{student_samples: 1}}
train: {json.dumps(t)}
export: {{gguf: [Q8_0], onnx: false, golden_max_new_tokens: 12}}
evaluate: {{teacher: true, student_before: true, max_new_tokens: 12}}
bench: {{runs: 5, warmup: 1, n_prompt: 32, n_gen: 8}}
""")
    return p


def _run(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_kto.cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        **kw,
    )


@pytest.mark.real_model
def test_pipeline_on_a_second_task_caches_stages_and_resumes_after_kill(tmp_path, tiny_model_dir):
    cfg = _yaml(tmp_path, tiny_model_dir, max_steps=40)
    out = tmp_path / "run"
    # 1. Kill -9 in the middle of training.
    proc = _run([str(cfg), "--quiet"])
    deadline = time.time() + 600
    while not list((out / "stages").glob("train-*/run/checkpoints/step-*")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((out / "stages").glob("train-*/done.json"))
    gen_done = {p.parent.name: p.stat().st_mtime for p in (out / "stages").glob("*/done.json")}
    assert {n.split("-")[0] for n in gen_done} >= {"generate", "label"}

    # 2. Rerun: generation and labeling are cached, training resumes from its checkpoint.
    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=900)
    assert p.returncode == 0, text[-4000:]
    assert "[generate] cached" in text and "[label] cached" in text and "[train] resuming" in text
    for name, mtime in gen_done.items():
        assert (out / "stages" / name / "done.json").stat().st_mtime == mtime, f"{name} was redone"
    train_report = json.loads(next((out / "stages").glob("train-*/run/train_report.json")).read_text())
    assert train_report["resumed_from"] >= 2

    rep = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in rep["rows"]]
    assert (
        names[:3] == ["teacher (with context)", "student before", "student after KTO (fp)"]
        and "student after, Q8_0" in names
    )
    teacher = rep["rows"][0]
    assert teacher["accuracy"] >= 0.5, teacher  # SmolLM2 with the capitals list answers most of them
    assert teacher["ttft"] != "-" and rep["rows"][3]["ttft"] != "-"
    assert "alignment gate" in (out / "report.md").read_text() and (out / "curves.png").is_file()
    # The artifact's accuracy is scored on the gate's answers (same budget), not decoded twice.
    ev = json.loads(next((out / "stages").glob("evaluate-*/done.json")).read_text())["result"]["results"]
    assert [r.get("answers") for r in ev if r["kind"] == "artifact"] == ["export gate"]

    # 3. A third run changes nothing: every stage cached.
    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and text.count("cached") >= 8, text[-2000:]


@pytest.mark.parametrize("section,key", [("finish", "stpes"), ("export", "ggfu")])
def test_pipeline_refuses_unknown_finish_and_export_keys_at_load(tmp_path, section, key):
    from edge_kto.pipeline import PipelineConfig

    p = tmp_path / "p.yaml"
    p.write_text(f"task: {TASK}\n{section}: {{{key}: 1}}\n")
    with pytest.raises(ValueError, match=rf"p\.yaml: {section}: unknown key\(s\) \['{key}'\]"):
        PipelineConfig.from_yaml(p)
