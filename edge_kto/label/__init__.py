"""Stage 2: mark each candidate desirable or undesirable → ``kto.jsonl`` + a summary.

Labelers: a rule verifier (built-in or ``module:function``), an LLM judge over any Teacher
backend, or human labels joined by id. Optionally the student's own samples (on-policy) are
drawn for the same prompts and labeled the same way: its wrong answers are the most useful
undesirable rows, since they are the mistakes the student actually makes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from edge_kto_runtime.errors import InvalidInput

from ..jsonl import DataError, DataIssue, iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..stats import kto_weight_range
from ..teacher.base import GenRequest, SamplingParams, Teacher, TeacherConfig, make_teacher
from .human import read_human_labels
from .judge import DEFAULT_RUBRIC, LLMJudge, parse_verdict
from .negatives import confusion_negatives
from .shared import phrasing_rows, shared_positives
from .verifiers import BUILTIN, get_verifier

__all__ = [
    "LABELERS",
    "LabelConfig",
    "LabelResult",
    "OnPolicyConfig",
    "run_label",
    "summarize_labels",
    "teacher_best_of_n",
    "STUDENT_SOURCES",
    "get_verifier",
    "parse_verdict",
    "BUILTIN",
]


@dataclass
class OnPolicyConfig:
    """Student self-samples mixed into the labeled data."""

    student: str  # model spec (HF folder, .gguf, known name)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(n=2, temperature=0.8))
    batch_size: int = TeacherConfig.batch_size


@dataclass
class LabelConfig:
    candidates: str
    out: str = "kto.jsonl"
    labeler: str = "verifier"  # a key of LABELERS: verifier | judge | human
    verifier: str | None = None  # default: each row's "verifier" field (set from task.json)
    judge: TeacherConfig | None = None
    rubric: str = DEFAULT_RUBRIC
    human_labels: str | None = None
    on_policy: OnPolicyConfig | None = None
    dedupe: bool = True  # drop repeated (prompt, completion) pairs
    confusion_negatives: int = 0  # per prompt: other intents' accepted answers as undesirable rows (negatives.py)
    shared_answers: int = 0  # fill each prompt up to this many accepted answers from its intent (shared.py)
    phrasings: str | None = None  # the augment stage's prompts.jsonl, answered with shared answers only
    progress: bool = True


@dataclass
class LabelResult:
    out: Path
    summary_path: Path
    summary: dict[str, Any]


def _read_candidates(path: str) -> list[dict]:
    rows: list[dict] = []
    issues: list[DataIssue] = []
    for line, obj in iter_jsonl(path, issues):
        for key in ("id", "prompt", "completion"):
            if key not in obj:
                issues.append(DataIssue(path, line, key, "missing"))
        obj["_line"] = line
        rows.append(obj)
    if issues:
        raise DataError(issues)
    if not rows:
        raise DataError([DataIssue(path, 0, None, "no candidates in file")])
    return rows


def _student_samples(cfg: OnPolicyConfig, rows: list[dict], progress: bool, student: Teacher | None) -> list[dict]:
    prompts: dict[str, dict] = {}
    for r in rows:
        prompts.setdefault(r.get("prompt_id", r["id"]), r)
    own = student is None
    if student is None:
        student = make_teacher(
            TeacherConfig(kind="hf", model=cfg.student, batch_size=cfg.batch_size, name=f"student:{cfg.student}")
        )
    out = []
    items = list(prompts.items())
    # greedy answers do not depend on the batch: one call, greedy_decode forms its own (larger) batches
    step = len(items) if cfg.sampling.temperature <= 0 else student.batch_size
    try:
        for start in tqdm(range(0, len(items), step), desc="student samples", disable=not progress):
            chunk = items[start : start + step]
            reqs = [GenRequest(pid, r["prompt"], list(range(cfg.sampling.n))) for pid, r in chunk]
            for (pid, r), texts in zip(chunk, student.generate(reqs, cfg.sampling)):
                for k, text in enumerate(texts):
                    if not text.strip():  # no answer is not a row (a KTO row needs a completion)
                        continue
                    out.append(
                        {
                            "id": f"{pid}#s{k}",
                            "prompt_id": pid,
                            "sample_index": k,
                            "prompt": r["prompt"],
                            "completion": text,
                            "reference": r.get("reference"),
                            "verifier": r.get("verifier"),
                            "source": "student",
                            "sampling": cfg.sampling.to_dict(),
                        }
                    )
    finally:
        if own:
            student.close()
    return out


def _verifier_labels(cfg: LabelConfig, rows: list[dict], judge_teacher: Teacher | None) -> list[bool | None]:
    """A rule per row: ``cfg.verifier``, else the row's own ``verifier`` (set from task.json)."""
    cache: dict[str, Any] = {}
    labels: list[bool | None] = []
    for r in rows:
        name = cfg.verifier or r.get("verifier")
        if not name:
            raise DataError(
                [
                    DataIssue(
                        cfg.candidates,
                        r.get("_line", 0),
                        "verifier",
                        "no verifier configured and the row names none (pass --verifier)",
                    )
                ]
            )
        fn = cache.setdefault(name, get_verifier(name))
        labels.append(bool(fn(r["completion"], r.get("reference"))))
    return labels


def _judge_labels(cfg: LabelConfig, rows: list[dict], judge_teacher: Teacher | None) -> list[bool | None]:
    """An LLM judge over any teacher backend (None where its verdict does not parse)."""
    if judge_teacher is not None:
        return LLMJudge(judge_teacher, cfg.rubric).judge(rows)
    if cfg.judge is None:
        raise InvalidInput("labeler 'judge' needs a judge teacher config")
    with make_teacher(cfg.judge) as own:
        return LLMJudge(own, cfg.rubric).judge(rows)


def _human_labels(cfg: LabelConfig, rows: list[dict], judge_teacher: Teacher | None) -> list[bool | None]:
    """Labels recorded by people, joined by row id (None for rows nobody rated)."""
    if not cfg.human_labels:
        raise InvalidInput("labeler 'human' needs human_labels (a JSONL or CSV file of id,label)")
    human = read_human_labels(cfg.human_labels)
    return [human.get(str(r["id"])) for r in rows]


#: Labelers by ``LabelConfig.labeler``: ``f(cfg, rows, judge_teacher) -> [True | False | None per row]``.
#: A new labeler: one function (here or in its own module) plus one line.
LABELERS: dict[str, Callable[[LabelConfig, list[dict], Teacher | None], list[bool | None]]] = {
    "verifier": _verifier_labels,
    "judge": _judge_labels,
    "human": _human_labels,
}


def _labels(cfg: LabelConfig, rows: list[dict], judge_teacher: Teacher | None) -> list[bool | None]:
    if cfg.labeler not in LABELERS:
        raise InvalidInput(f"labeler must be one of {', '.join(LABELERS)}, got {cfg.labeler!r}")
    return LABELERS[cfg.labeler](cfg, rows, judge_teacher)


def run_label(cfg: LabelConfig, judge_teacher: Teacher | None = None, student: Teacher | None = None) -> LabelResult:
    rows = _read_candidates(cfg.candidates)
    if cfg.on_policy is not None:
        if cfg.labeler == "human":
            raise InvalidInput("on-policy student samples cannot be labeled by pre-recorded human labels")
        rows += _student_samples(cfg.on_policy, rows, cfg.progress, student)
    labels = _labels(cfg, rows, judge_teacher)

    kept, seen = [], set()
    unlabeled = duplicates = 0
    for r, lab in zip(rows, labels):
        if lab is None:
            unlabeled += 1
            continue
        key = (repr(r["prompt"]), r["completion"].strip())
        if cfg.dedupe and key in seen:
            duplicates += 1
            continue
        seen.add(key)
        row = {k: v for k, v in r.items() if not k.startswith("_")}
        row["label"] = lab
        row["labeler"] = cfg.labeler if cfg.labeler != "verifier" else f"verifier:{cfg.verifier or r.get('verifier')}"
        kept.append(row)
    cache: dict[str, Any] = {}

    def own_verifier(row: dict) -> bool:
        name = cfg.verifier or row.get("verifier")
        return bool(name) and bool(cache.setdefault(name, get_verifier(name))(row["completion"], row.get("reference")))

    if cfg.phrasings and not cfg.shared_answers:
        raise InvalidInput("phrasings without shared_answers: new phrasings are answered only with shared answers")
    if cfg.shared_answers:
        extra = phrasing_rows(kept, [r for _, r in iter_jsonl(cfg.phrasings)]) if cfg.phrasings else []
        kept += shared_positives(kept, cfg.shared_answers, own_verifier, extra)
    if cfg.confusion_negatives:
        kept += confusion_negatives(kept, cfg.confusion_negatives, own_verifier)
    write_jsonl_atomic(cfg.out, kept)
    summary = summarize_labels(kept, unlabeled, duplicates, cfg.labeler)
    summary_path = Path(cfg.out).with_suffix(".summary.json")
    write_json_atomic(summary_path, summary)
    return LabelResult(Path(cfg.out), summary_path, summary)


#: ``source`` prefixes of rows made from other rows' answers (``shared:<donor>``, ``confusion:<donor>``)
DERIVED_SOURCES = ("shared:", "confusion:")

#: ``source`` of rows the student produced: sampled in torch (label, rounds) or rated on a device.
STUDENT_SOURCES = ("student", "device")


def teacher_best_of_n(kto_path: Path) -> tuple[int, int] | None:
    """(prompts with at least one accepted teacher sample, prompts) in a labelled file: the teacher's
    best-of-n, the ceiling of what its data can show the student. None without teacher rows."""
    if not Path(kto_path).is_file():
        return None
    ok: dict[str, bool] = {}
    for _, r in iter_jsonl(kto_path):
        source = str(r.get("source", ""))
        if source in STUDENT_SOURCES or source.startswith(DERIVED_SOURCES):  # the teacher's own samples only
            continue
        pid = str(r.get("prompt_id", r["id"]))
        ok[pid] = ok.get(pid, False) or bool(r["label"])
    return (sum(ok.values()), len(ok)) if ok else None


def summarize_labels(
    rows: list[dict], unlabeled: int = 0, duplicates: int = 0, labeler: str = "verifier"
) -> dict[str, Any]:
    """Class counts per source, prompts left without a desirable row, and KTO's Eq. 8 weight range."""
    by_source: dict[str, dict[str, int]] = {}
    desirable_by_prompt: dict[str, int] = {}
    for r in rows:
        source = str(r.get("source", "unknown"))
        if source.startswith(DERIVED_SOURCES):  # one entry per kind, not one per donor prompt
            source = source.split(":")[0]
        src = by_source.setdefault(source, {"desirable": 0, "undesirable": 0})
        src["desirable" if r["label"] else "undesirable"] += 1
        pid = str(r.get("prompt_id", r["id"]))
        desirable_by_prompt[pid] = desirable_by_prompt.get(pid, 0) + int(r["label"])
    n_d = sum(r["label"] for r in rows)
    weights = kto_weight_range(n_d, len(rows) - n_d)
    return {
        "labeler": labeler,
        "rows": len(rows),
        "desirable": n_d,
        "undesirable": len(rows) - n_d,
        "by_source": by_source,
        "unlabeled_or_unparseable": unlabeled,
        "duplicates_dropped": duplicates,
        "prompts": len(desirable_by_prompt),
        "prompts_without_desirable": sorted(p for p, n in desirable_by_prompt.items() if n == 0),
        "recommended_weights": weights.recommended,
        "eq8": json.loads(json.dumps(asdict(weights))),  # tuples -> lists, as read back
    }
