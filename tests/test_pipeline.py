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

from edge_kto.data import read_task
from edge_kto.evaluate import eval_teacher
from edge_kto.intervals import accuracy_interval
from edge_kto.run_folder import RunFolder
from edge_kto.teacher.base import TeacherConfig
from edge_kto_runtime.verifiers import get_verifier

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
    md = (out / "report.md").read_text()
    assert "alignment gate" in md and (out / "curves.png").is_file()
    # Every accuracy carries its 95% interval over questions; the teacher's best-of-n and each student's
    # paired difference from the teacher are stated.
    (outputs,) = (out / "stages").glob("evaluate-*/outputs.jsonl")
    verdicts = [json.loads(x) for x in outputs.read_text().splitlines()]
    _, lo, hi = accuracy_interval([o["correct"] for o in verdicts if o["model"] == teacher["name"]])
    assert f"[{lo:.1%}, {hi:.1%}]" in md and lo <= teacher["accuracy"] <= hi
    assert "teacher best-of-n on the training prompts" in md and "vs the teacher's greedy answers" in md
    # The artifact's accuracy is scored on the gate's answers (same budget), not decoded twice.
    ev = json.loads(next((out / "stages").glob("evaluate-*/done.json")).read_text())["result"]["results"]
    assert [r.get("answers") for r in ev if r["kind"] == "artifact"] == ["export gate"]
    # The fp student's accuracy is scored on the golden set's greedy answers (the export decoded them
    # with the same budget), and they are what a fresh decode of the eval split answers.
    (fp_row,) = [r for r in ev if r["kind"] == "student_fp"]
    assert fp_row["answers"] == "golden set"
    fp_model = RunFolder(next((out / "stages").glob("train-*/run"))).model
    fresh = eval_teacher("fp", TeacherConfig(kind="hf", model=str(fp_model)), read_task(TASK), False, 12)
    assert [o["answer"] for o in verdicts if o["model"] == fp_row["name"]] == [o["answer"] for o in fresh.outputs]

    # 3. A third run changes nothing: every stage cached.
    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=600)
    assert p.returncode == 0 and text.count("cached") >= 8, text[-2000:]


@pytest.mark.real_model
@pytest.mark.parametrize("answers", ["teacher", "shared"])
def test_augmented_and_rejection_sampled_training_data_never_holds_an_eval_prompt(tmp_path, tiny_model_dir, answers):
    """``augment`` + ``coverage`` on: the teacher's new phrasings and its extra samples reach training,
    no eval prompt (or a near-duplicate) reaches any training file, and the report says what was added.
    ``answers: shared``: the phrasings reach training through the label stage's shared answers, and the
    teacher never decodes for them."""
    from edge_kto.augment import near_duplicate, normalise

    cfg = _yaml(tmp_path, tiny_model_dir, max_steps=2)
    extra = (
        f"augment: {{per_prompt: 2, max_new_tokens: 64, answers: {answers}}}\n"
        "coverage: {accepted: 1, max_samples: 4, guided: 1}\n"
        + ("label: {shared_answers: 2}\n" if answers == "shared" else "")
    )
    cfg.write_text(cfg.read_text() + extra)
    out = tmp_path / "run"
    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=900)
    assert p.returncode == 0, text[-4000:]
    evals = [it.prompt for it in read_task(TASK).eval]
    stages = out / "stages"
    (aug,) = stages.glob("augment-*/prompts.jsonl")
    added = [json.loads(x) for x in aug.read_text().splitlines()]
    assert added and all("~p" in r["id"] for r in added)
    training = [aug, *stages.glob("generate-*/candidates.jsonl"), *stages.glob("label-*/kto.jsonl")]
    normalised_evals = {normalise(e) for e in evals}
    for f in training:
        for row in (json.loads(x) for x in f.read_text().splitlines()):
            prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
            assert normalise(prompt) not in normalised_evals, (f.name, prompt)  # no eval prompt, in any form
            if "~p" in str(row.get("prompt_id", row.get("id"))):  # a new phrasing: not even near one
                assert not any(near_duplicate(prompt, e, 0.85) for e in evals), (f.name, prompt)
    (cands,) = stages.glob("generate-*/candidates.jsonl")
    ids = {json.loads(x)["prompt_id"] for x in cands.read_text().splitlines()}
    if answers == "teacher":
        assert {r["id"] for r in added} <= ids  # the teacher answered the new phrasings too
    else:
        assert not {r["id"] for r in added} & ids  # no decoding for them...
        (kto,) = stages.glob("label-*/kto.jsonl")
        rows = [json.loads(x) for x in kto.read_text().splitlines()]
        shared = [r for r in rows if "~p" in r["prompt_id"]]
        verify = get_verifier(read_task(TASK).verifier)
        assert shared and all(r["label"] and r["source"].startswith("shared:") for r in shared)  # ...shared answers
        assert all(verify(r["completion"], r["reference"]) for r in shared)
    md = (out / "report.md").read_text()
    assert "augment: " in md and "teacher coverage: " in md and "| confused |" in md


@pytest.mark.parametrize("section,key", [("finish", "stpes"), ("export", "ggfu")])
def test_pipeline_refuses_unknown_finish_and_export_keys_at_load(tmp_path, section, key):
    from edge_kto.pipeline import PipelineConfig

    p = tmp_path / "p.yaml"
    p.write_text(f"task: {TASK}\n{section}: {{{key}: 1}}\n")
    with pytest.raises(ValueError, match=rf"p\.yaml: {section}: unknown key\(s\) \['{key}'\]"):
        PipelineConfig.from_yaml(p)


@pytest.mark.real_model
def test_on_policy_rounds_train_on_the_students_own_answers_and_resume_after_kill(tmp_path, tiny_model_dir):
    """``rounds: {count: 2}``: each round samples the previous round's model, labels its answers with
    the task's verifier, trains KTO from (and against) that model; a kill -9 in round 2's training
    resumes from its checkpoint with the same rows; evaluate reports accuracy round over round."""
    cfg = _yaml(tmp_path, tiny_model_dir, max_steps=4)
    cfg.write_text(cfg.read_text() + "rounds: {count: 2, samples: 2, max_steps: 8, teacher_fraction: 0.5}\n")
    out = tmp_path / "run"
    proc = _run([str(cfg), "--quiet"])
    deadline = time.time() + 900
    while not list((out / "stages").glob("round2-*/run/checkpoints/step-*")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (r2,) = (out / "stages").glob("round2-*")
    rows_before = (r2 / "kto.jsonl").read_bytes()

    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=900)
    assert p.returncode == 0, text[-4000:]
    assert "[round1] cached" in text and "[round2] resuming" in text
    assert (r2 / "kto.jsonl").read_bytes() == rows_before
    (r1,) = (out / "stages").glob("round1-*")
    (train,) = (out / "stages").glob("train-*")
    (label,) = (out / "stages").glob("label-*/kto.jsonl")
    n_teacher = sum(json.loads(x)["source"] != "student" for x in label.read_text().splitlines())
    for rnd, previous in ((r1, train), (r2, r1)):
        cfg_used = json.loads((rnd / "run" / "config.json").read_text())
        assert cfg_used["model"] == str(previous / "run" / "model") and cfg_used["sft_steps"] == 0
        rows = [json.loads(x) for x in (rnd / "kto.jsonl").read_text().splitlines()]
        own = [r for r in rows if r["source"] == "student"]
        assert len(own) == 2 * 10 and all(r["round"] == int(rnd.name[5]) for r in rows)  # 10 prompts x 2 samples
        assert len(rows) - len(own) == round(0.5 * n_teacher)  # teacher_fraction of the teacher's labelled rows
    assert json.loads((r2 / "run" / "train_report.json").read_text())["resumed_from"] >= 2

    rep = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in rep["rows"]]
    assert ["student after round 0 (fp)", "student after round 1 (fp)", "student after KTO (fp, round 2)"] == [
        n for n in names if "round" in n
    ]
    md = (out / "report.md").read_text()
    assert "on-policy rounds" in md and "round2: student's own" in md
    (fin,) = (out / "stages").glob("export-*/bundle/manifest.json")
    assert json.loads(fin.read_text())["training"]["run"] == str(r2 / "run")  # the last round ships


def _rated(db: Path) -> int:
    import sqlite3

    if not db.is_file():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
    except sqlite3.OperationalError:  # the server has not created its tables yet
        return 0
    finally:
        con.close()


@pytest.mark.real_model
def test_device_feedback_round_real_server_http_sqlite_export_and_kill_resume(tmp_path, tiny_model_dir):
    """``rounds: {source: device}``: the student is exported and served by ``edge-runtime serve``; a
    simulated user asks every training prompt over HTTP and rates the answer through /v1/feedback;
    ``edge-runtime feedback export --bundle`` gives the round's rows. kill -9 in the middle of the
    ratings: the rerun asks only what was not rated, no row is lost or duplicated."""
    cfg = _yaml(tmp_path, tiny_model_dir, max_steps=2)
    rounds = "rounds: {count: 1, source: device, samples: 2, max_steps: 2, teacher_fraction: 1.0}"
    cfg.write_text(cfg.read_text() + rounds + "\n")
    out = tmp_path / "run"
    proc = _run([str(cfg), "--quiet"])
    deadline = time.time() + 900
    while _rated(db := next(iter((out / "stages").glob("round1-*/feedback.sqlite")), tmp_path / "none")) < 5:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (db.parent / "kto.jsonl").exists()
    rated_before = _rated(db)

    p = _run([str(cfg), "--quiet"])
    text, _ = p.communicate(timeout=900)
    assert p.returncode == 0, text[-4000:]
    assert "[round1] resuming" in text
    rnd = db.parent
    info = json.loads((rnd / "feedback.summary.json").read_text())
    assert info["resumed_with"] >= rated_before >= 5 and info["asked_this_run"] == 20 - info["resumed_with"]
    from edge_kto_runtime.bundle import manifest_digest

    rows = [json.loads(x) for x in (rnd / "feedback.jsonl").read_text().splitlines()]
    notes = [r["note"] for r in rows]
    assert len(rows) == 20 and len(set(notes)) == 20  # 10 prompts x 2 samples, none lost, none twice
    assert {r["bundle"] for r in rows} == {manifest_digest(rnd / "bundle")}
    assert {r["source"] for r in rows} == {"device"}
    trained = [json.loads(x) for x in (rnd / "kto.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "device" for r in trained) == 20 and all(r["round"] == 1 for r in trained)
    assert json.loads((rnd / "run" / "config.json").read_text())["data"] == str(rnd / "kto.jsonl")
    assert "round1: student's own" in (out / "report.md").read_text()
