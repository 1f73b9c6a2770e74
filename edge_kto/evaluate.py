"""Task accuracy on a task's eval split, for any way the pipeline can answer: a teacher (with its
context), the student before and after KTO (transformers), and each bundle artifact (runtime).

Greedy decoding everywhere, the task's verifier decides; per-prompt outputs are kept so a
report can show what went right and wrong.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_kto_runtime.defaults import MAX_NEW_TOKENS
from edge_kto_runtime.verifiers import get_verifier

from .confusion import confusion_rule
from .data import Task, to_messages
from .generate import teacher_messages
from .teacher.base import GenRequest, SamplingParams, TeacherConfig, make_teacher


@dataclass
class EvalResult:
    name: str
    accuracy: float
    correct: int
    total: int
    seconds: float
    outputs: list[dict[str, Any]] = field(default_factory=list)
    confused: int | None = None  # wrong answers carrying another intent's facts (phrase verifiers only)

    def row(self) -> dict[str, Any]:
        row = {
            "name": self.name,
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "seconds": round(self.seconds, 2),
        }
        if self.confused is not None:
            row.update(confused=self.confused, confusion_rate=self.confused / max(self.total, 1))
        return row


def score_answers(name: str, task: Task, answers: list[str], seconds: float) -> EvalResult:
    """Verify ``answers`` (one per eval item, in order) with the task's verifier, and mark confusions."""
    verify, rule = get_verifier(task.verifier), confusion_rule(task)
    outs = []
    for it, a in zip(task.eval, answers):
        out = {"id": it.id, "answer": a, "correct": bool(verify(a, it.reference))}
        if rule is not None:
            out["confused_with"] = rule.foreign(it, a) if not out["correct"] else []
        outs.append(out)
    correct = sum(o["correct"] for o in outs)
    confused = None if rule is None else sum(bool(o["confused_with"]) for o in outs)
    return EvalResult(name, correct / max(len(outs), 1), correct, len(outs), seconds, outs, confused)


def eval_teacher(
    name: str, cfg: TeacherConfig, task: Task, with_context: bool, max_new_tokens: int = MAX_NEW_TOKENS
) -> EvalResult:
    """A teacher (or the student as an HF/GGUF model): greedy answers; ``with_context`` adds teacher_context."""
    t0 = time.perf_counter()
    teacher = make_teacher(cfg)
    try:
        sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        reqs = [
            GenRequest(it.id, teacher_messages(it.prompt, task.system, task.teacher_context if with_context else None))
            for it in task.eval
        ]
        answers = [texts[0] for texts in teacher.generate(reqs, sp)]
    finally:
        teacher.close()
    return score_answers(name, task, answers, time.perf_counter() - t0)


def eval_artifact(
    name: str,
    bundle: str,
    artifact: str,
    task: Task,
    max_new_tokens: int = MAX_NEW_TOKENS,
    n_threads: int | None = None,
) -> EvalResult:
    from edge_kto_runtime import load

    t0 = time.perf_counter()
    with load(bundle, artifact=artifact, n_threads=n_threads, verify=False) as m:
        answers = [
            m.chat(to_messages(it.prompt, task.system), max_new_tokens=max_new_tokens, temperature=0.0)
            for it in task.eval
        ]
    return score_answers(name, task, answers, time.perf_counter() - t0)


def _golden_for_eval(bundle: Path, task: Task, max_new_tokens: int) -> tuple[dict, list[dict], list[str]] | None:
    """(manifest, golden rows, eval keys) when the bundle's golden set was decoded with the eval's token
    budget, else None. A key is a prompt's chat messages, the field golden rows and eval items share."""
    from edge_kto_runtime import open_bundle
    from edge_kto_runtime.check import read_golden

    manifest = open_bundle(bundle, verify=False).manifest
    golden = manifest.get("golden") or {}
    if golden.get("max_new_tokens") != max_new_tokens:
        return None
    rows = read_golden(Path(bundle) / golden["path"])
    return manifest, rows, [json.dumps(to_messages(it.prompt, task.system)) for it in task.eval]


def gate_answers(path: Path, bundle: Path, task: Task, max_new_tokens: int) -> dict[str, list[str]]:
    """Per artifact, its greedy answers to the eval split as the export gate decoded them, in task order.

    The gate answers every golden prompt greedily with the golden set's budget (``check_artifact``);
    when that budget is ``max_new_tokens`` and the golden prompts cover the eval split, those answers
    are exactly what :func:`eval_artifact` would decode, so they are scored instead. Returns {} (decode
    again) when the file is missing or anything differs.
    """
    found = _golden_for_eval(bundle, task, max_new_tokens) if path.is_file() else None
    if found is None:
        return {}
    _, rows, keys = found
    out = {}
    for art, answers in json.loads(path.read_text()).items():
        if len(answers) != len(rows):
            continue
        by_prompt = {json.dumps(r["messages"]): a for r, a in zip(rows, answers)}
        if all(k in by_prompt for k in keys):
            out[art] = [by_prompt[k] for k in keys]
    return out


def golden_fp_answers(
    bundle: Path, task: Task, max_new_tokens: int, fp_run: Path, finished: Path | None = None
) -> list[str] | None:
    """The fp student's greedy answers to the eval split, from the bundle's golden set, in task order
    (with ``finished``: the finished weights' own, ``exported_greedy_text``, when the bundle was made
    from that finish folder).

    The golden set holds the greedy answer of the training run's fp model to every golden prompt
    (batched transformers decoding with the golden budget, what :func:`eval_teacher` does for an
    HF model); when the bundle was made from ``fp_run`` with the eval's budget and the golden
    prompts cover the eval split, those answers are scored instead of decoding again. None otherwise.
    """
    found = _golden_for_eval(bundle, task, max_new_tokens)
    if found is None:
        return None
    manifest, rows, keys = found
    training = manifest.get("training") or {}
    run, field = training.get("run"), "greedy_text"
    if not run or Path(run).resolve() != Path(fp_run).resolve():
        return None
    if finished is not None:
        made_from = (training.get("finish") or {}).get("dir")
        if not made_from or Path(made_from).resolve() != Path(finished).resolve():
            return None
        field = "exported_greedy_text"
    by_prompt = {json.dumps(r["messages"]): r[field].strip() for r in rows if field in r}
    return [by_prompt[k] for k in keys] if all(k in by_prompt for k in keys) else None
