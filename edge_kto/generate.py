"""Stage 1: the teacher samples candidate answers → ``candidates.jsonl``.

Resumable: each finished row is appended and fsynced (see :class:`AppendLog`), so after a
``kill -9`` a rerun reads what is there, skips every finished ``(prompt id, sample index)``
and loses at most the requests that were in flight. Row ids are ``<prompt id>#<sample index>``
and are never written twice.

Context distillation: ``teacher_context`` (a knowledge text, an expert system prompt) is
shown to the teacher only; each row's ``prompt`` is what the student will see.

Coverage (rejection sampling, :class:`CoverageConfig`): a prompt whose answers do not yet include
``accepted`` that pass the task's verifier is sampled again, its sample count doubling up to
``max_samples``, so the budget goes to the prompts that lack a demonstration. Prompts still without
one may get ``guided`` reference-guided samples: the teacher is also shown what a right answer must
contain; those rows carry ``guided: true``. Which samples are asked for depends only on the verdicts
of the earlier ones (each seeded by prompt id and sample index), so a killed run resumes to the
same file.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.verifiers import get_verifier

from .data import Messages, PromptItem, read_prompts, read_task, to_messages
from .jsonl import AppendLog, write_jsonl_atomic
from .teacher.base import GenRequest, SamplingParams, Teacher, TeacherConfig, make_teacher


@dataclass(frozen=True)
class CoverageConfig:
    """Rejection sampling until each training prompt has ``accepted`` answers the verifier passes."""

    accepted: int = 0  # passing answers wanted per prompt; 0 = off (exactly sampling.n per prompt)
    max_samples: int = 16  # per prompt, every round together (the first round is sampling.n)
    guided: int = 0  # reference-guided samples for a prompt with no passing answer after max_samples

    def validate(self) -> None:
        for name in ("accepted", "max_samples", "guided"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"{name}: must be a whole number >= 0, got {v!r}")

    @property
    def on(self) -> bool:
        return self.accepted > 0 or self.guided > 0


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
    extra_prompts: str | None = None  # a prompt JSONL added to a task's training prompts (augment's phrasings)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)  # needs a task folder's verifier
    progress: bool = True


@dataclass
class GenerateResult:
    out: Path
    prompts: int
    written: int
    skipped: int
    seconds: float
    teacher: str
    coverage: dict[str, Any] | None = None  # with a verifier: prompts with a passing answer, per intent


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
    if cfg.extra_prompts:
        items = items + read_prompts(cfg.extra_prompts)
    cov = cfg.coverage
    cov.validate()
    if cov.accepted and cov.max_samples < cfg.sampling.n:
        raise InvalidInput(f"coverage: max_samples: {cov.max_samples} is below the first round's n={cfg.sampling.n}")
    if cov.on and verifier is None:
        raise InvalidInput("generate: coverage needs a task folder (its verifier decides which answers pass)")
    log = AppendLog(cfg.out)
    name = cfg.teacher.display_name() if teacher is None else teacher.name
    by_id = {it.id: it for it in items}
    rows = log.recover(_same_job(by_id, system, context, name, cfg.sampling))
    job = _Job(cfg, items, system, context, verifier, rows)
    skipped = len(rows)
    written = 0
    own_teacher = teacher is None
    try:
        # Round 0 is sampling.n per prompt; with coverage on, later rounds ask only for what is missing.
        while pending := job.pending():
            teacher = teacher or make_teacher(cfg.teacher)
            name = teacher.name
            bar = tqdm(
                total=sum(len(r.sample_indices) for _, r in pending),
                desc=f"generate ({name}){job.round_name()}",
                unit="sample",
                disable=not cfg.progress,
            )
            try:
                # Answers come back as they finish (a batched teacher finishes short ones first); each is
                # saved at once, so a kill loses only the answers in flight.
                for i, k, text in teacher.stream([r for _, r in pending], cfg.sampling):
                    row = _row(
                        pending[i][0], k, text, system, name, cfg.sampling, verifier, context, k >= job.guided_from
                    )
                    log.append(row)
                    job.add(row)
                    written += 1
                    bar.update(1)
            finally:
                bar.close()
    finally:
        log.close()
        if own_teacher and teacher is not None:
            teacher.close()
    if log.path.exists():  # also when nothing was pending: a run killed after its last row, before sorting
        _sort_rows(log.path, {it.id: n for n, it in enumerate(items)})
    return GenerateResult(Path(cfg.out), len(items), written, skipped, time.perf_counter() - t0, name, job.coverage())


class _Job:
    """Which samples a run still needs: round 0 (``sampling.n`` per prompt), then, with coverage on,
    doubling rounds for prompts short of passing answers, then guided samples (indices from
    ``max_samples``) for prompts with none. Decided from the rows alone, so a resumed run asks for
    exactly what an uninterrupted one would."""

    def __init__(self, cfg: GenerateConfig, items: list[PromptItem], system, context, verifier, rows: list[dict]):
        self.cfg, self.items, self.system, self.context = cfg, items, system, context
        self.verify = get_verifier(verifier) if verifier else None
        self.cov = cfg.coverage
        self.guided_from = max(self.cov.max_samples, cfg.sampling.n) if self.cov.guided else 1 << 62
        self.done: dict[str, dict[int, bool]] = {it.id: {} for it in items}
        self.round = 0
        for r in rows:
            self.add(r)

    def add(self, row: dict) -> dict:
        verdict = bool(self.verify(row["completion"], row.get("reference"))) if self.verify else False
        self.done.setdefault(row["prompt_id"], {})[row["sample_index"]] = verdict
        return row

    def _plain_target(self, pid: str) -> int:
        """How many unguided samples the prompt gets: ``n``, doubled while every sample so far is
        in and fewer than ``accepted`` pass, up to ``max_samples``. Depends only on finished rounds."""
        have, n, cov = self.done[pid], self.cfg.sampling.n, self.cov
        size = n
        while cov.accepted and size < cov.max_samples:
            if not all(k in have for k in range(size)) or sum(have[k] for k in range(size)) >= cov.accepted:
                break
            size = min(2 * size, cov.max_samples)
        return size

    def pending(self) -> list[tuple[PromptItem, GenRequest]]:
        """The next round's requests (empty when the job is complete)."""
        out = []
        for it in self.items:
            have = self.done[it.id]
            size = self._plain_target(it.id)
            missing = [k for k in range(size) if k not in have]
            if missing:
                out.append((it, GenRequest(it.id, teacher_messages(it.prompt, self.system, self.context), missing)))
                continue
            unguided_pass = any(have[k] for k in range(size))
            if self.cov.guided and not unguided_pass and (not self.cov.accepted or size >= self.cov.max_samples):
                guided = range(self.guided_from, self.guided_from + self.cov.guided)
                if missing := [k for k in guided if k not in have]:
                    out.append((it, GenRequest(it.id, self._guided_messages(it), missing)))
        self.round += 1
        return out

    def _guided_messages(self, it: PromptItem) -> Messages:
        must = "\n\n" + reference_hint(it.reference)
        return teacher_messages(it.prompt, self.system, (self.context or "") + must)

    def round_name(self) -> str:
        return "" if self.round <= 1 else f" round {self.round}"

    def coverage(self) -> dict[str, Any] | None:
        """Training prompts with >= 1 passing answer, without and with guided samples, per intent."""
        if self.verify is None:
            return None
        by_intent: dict[str, list[int]] = {}
        plain = guided = 0
        for it in self.items:
            have = self.done[it.id]
            ok_plain = any(v for k, v in have.items() if k < self.guided_from)
            ok_any = any(have.values())
            plain += ok_plain
            guided += ok_any
            c = by_intent.setdefault(it.intent or "(no intent)", [0, 0])
            c[0] += ok_any
            c[1] += 1
        total = max(len(self.items), 1)
        return {
            "prompts": len(self.items),
            "covered_unguided": plain,
            "covered": guided,
            "coverage_unguided": plain / total,
            "coverage": guided / total,
            "samples": sum(len(h) for h in self.done.values()),
            "by_intent": {k: {"covered": a, "prompts": b} for k, (a, b) in sorted(by_intent.items())},
        }


def reference_hint(reference: Any) -> str:
    """What a reference-guided teacher is told a right answer contains."""
    if isinstance(reference, list) and all(isinstance(p, str) for p in reference):
        return "A correct answer states all of these facts verbatim: " + "; ".join(reference) + "."
    return f"The correct answer is: {reference}"


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
    guided: bool = False,
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
    if it.intent:
        row["intent"] = it.intent
    if guided:
        row["guided"] = True  # the teacher also saw what a right answer contains (reference_hint)
    return row
