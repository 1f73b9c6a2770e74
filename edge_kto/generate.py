"""Stage 1: the teacher samples candidate answers → ``candidates.jsonl``.

Resumable: each finished row is appended and fsynced (see :class:`AppendLog`), so after a
``kill -9`` a rerun reads what is there, skips every finished ``(prompt id, sample index)``
and loses at most the requests that were in flight. Row ids are ``<prompt id>#<sample index>``
and are never written twice.

Context distillation: ``teacher_context`` (a knowledge text, an expert system prompt) is
shown to the teacher only; each row's ``prompt`` is what the student will see.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .data import Messages, PromptItem, read_prompts, read_task, to_messages
from .jsonl import AppendLog, write_jsonl_atomic
from .teacher.base import GenRequest, SamplingParams, Teacher, TeacherConfig, make_teacher


@dataclass
class GenerateConfig:
    prompts: str  # a prompt JSONL file, or a task folder (task.json + train/eval.jsonl)
    out: str = "candidates.jsonl"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None  # seen by teacher and student
    teacher_context: str | None = None  # seen by the teacher only
    split: str = "train"  # for task folders
    limit: int | None = None  # first N prompts only
    progress: bool = True


@dataclass
class GenerateResult:
    out: Path
    prompts: int
    written: int
    skipped: int
    seconds: float
    teacher: str


def teacher_messages(prompt, system: str | None, teacher_context: str | None) -> Messages:
    """The teacher sees the shared system prompt followed by the teacher-only context."""
    sys_text = "\n\n".join(s for s in (system, teacher_context) if s)
    return to_messages(prompt, sys_text or None)


def load_prompt_items(cfg: GenerateConfig) -> tuple[list[PromptItem], str | None, str | None, str | None]:
    """Return (items, system, teacher_context, verifier) from a prompt file or a task folder."""
    src = Path(cfg.prompts)
    if src.is_dir():
        task = read_task(src)
        items = task.train if cfg.split == "train" else task.eval
        return items, cfg.system or task.system, cfg.teacher_context or task.teacher_context, task.verifier
    return read_prompts(src), cfg.system, cfg.teacher_context, None


def run_generate(cfg: GenerateConfig, teacher: Teacher | None = None) -> GenerateResult:
    t0 = time.perf_counter()
    items, system, context, verifier = load_prompt_items(cfg)
    if cfg.limit:
        items = items[: cfg.limit]
    log = AppendLog(cfg.out)
    name = cfg.teacher.display_name() if teacher is None else teacher.name
    by_id = {it.id: it for it in items}
    done = {
        (r["prompt_id"], r["sample_index"]) for r in log.recover(_same_job(by_id, system, context, name, cfg.sampling))
    }
    wanted = range(cfg.sampling.n)
    pending = []
    for it in items:
        missing = [k for k in wanted if (it.id, k) not in done]
        if missing:
            pending.append((it, GenRequest(it.id, teacher_messages(it.prompt, system, context), missing)))
    skipped = len(items) * cfg.sampling.n - sum(len(r.sample_indices) for _, r in pending)
    own_teacher = teacher is None
    written = 0
    if pending:
        teacher = teacher or make_teacher(cfg.teacher)
        name = teacher.name
        bar = tqdm(
            total=sum(len(r.sample_indices) for _, r in pending),
            desc=f"generate ({name})",
            unit="sample",
            disable=not cfg.progress,
        )
        try:
            # Answers come back as they finish (a batched teacher finishes short ones first); each is
            # saved at once, so a kill loses only the answers in flight.
            for i, k, text in teacher.stream([r for _, r in pending], cfg.sampling):
                log.append(_row(pending[i][0], k, text, system, name, cfg.sampling, verifier, context))
                written += 1
                bar.update(1)
        finally:
            bar.close()
            log.close()
            if own_teacher:
                teacher.close()
    if log.path.exists():  # also when nothing was pending: a run killed after its last row, before sorting
        _sort_rows(log.path, {it.id: n for n, it in enumerate(items)})
    return GenerateResult(Path(cfg.out), len(items), written, skipped, time.perf_counter() - t0, name)


def _sort_rows(path: Path, order: dict[str, int]) -> None:
    """Put a finished file in prompt order, sample index within a prompt, whatever order the teacher
    finished in: later stages (dedupe keeps the first row, training order) then see the same file
    from a batched, a sequential or a resumed run."""
    rows = AppendLog(path).recover()
    key = [(order.get(r["prompt_id"], len(order)), r["sample_index"]) for r in rows]
    if key != sorted(key):
        write_jsonl_atomic(path, [r for _, r in sorted(zip(key, rows), key=lambda kr: kr[0])])


def _same_job(
    items: dict[str, PromptItem], system: str | None, context: str | None, teacher: str, sp: SamplingParams
) -> Any:
    """A resumed generate continues only the same job: rows already in the file must come from
    these prompts, this teacher, this teacher context and these sampling settings."""
    want_sampling = _sampling(sp)
    want_context = _context_digest(context)

    def check(line: int, row: dict) -> str | None:
        if not isinstance(row.get("prompt_id"), str) or not isinstance(row.get("sample_index"), int):
            return "no 'prompt_id' / 'sample_index' (not a candidates file written by edge-kto generate)"
        it = items.get(row["prompt_id"])
        if it is not None and row.get("prompt") != to_messages(it.prompt, system):
            return (
                f"the prompt of id {row['prompt_id']!r} (or the system prompt) has changed since this row was generated"
            )
        if row.get("source") != f"teacher:{teacher}":
            return f"generated by {row.get('source')!r}, this run's teacher is 'teacher:{teacher}'"
        if row.get("sampling") != want_sampling:
            return f"sampled with {row.get('sampling')}, this run samples with {want_sampling}"
        if row.get("teacher_context") != want_context:
            return "the teacher context has changed since this row was generated"
        return None

    return check


def _sampling(sp: SamplingParams) -> dict:
    return {"temperature": sp.temperature, "top_p": sp.top_p, "max_new_tokens": sp.max_new_tokens, "seed": sp.seed}


def _context_digest(context: str | None) -> str | None:
    return hashlib.sha256(context.encode("utf-8")).hexdigest()[:16] if context else None


def _row(
    it: PromptItem,
    k: int,
    text: str,
    system: str | None,
    teacher: str,
    sp: SamplingParams,
    verifier: str | None,
    context: str | None = None,
) -> dict:
    row = {
        "id": f"{it.id}#{k}",
        "prompt_id": it.id,
        "sample_index": k,
        "prompt": to_messages(it.prompt, system),
        "completion": text,
        "reference": it.reference,
        "source": f"teacher:{teacher}",
        "sampling": _sampling(sp),
    }
    if context:
        row["teacher_context"] = _context_digest(context)  # its digest: resume refuses another context
    if verifier:
        row["verifier"] = verifier
    return row
