"""More ways of asking: the teacher rewrites each training prompt into new phrasings.

A student that saw 8 phrasings of an intent does not recognise a ninth; the teacher can write more.
Each new phrasing keeps its source prompt's ``reference`` and ``intent`` (the same question, asked
differently), and is kept only when it is new: not the source again, not a near-duplicate of another
training prompt or phrasing, and never a near-duplicate of any eval prompt (:func:`near_duplicate`),
so held-out questions stay held out. The eval split is read only as that blocklist; no eval row is
ever written to a training file.

Resumable like ``generate``: the teacher's answer for each source prompt is appended and fsynced
(``raw.jsonl``) before the next is kept; a rerun skips finished prompts and filtering (pure, in
prompt order) writes ``prompts.jsonl`` atomically at the end.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edge_kto_runtime.errors import InvalidInput

from .data import PromptItem, Task
from .jsonl import AppendLog, write_jsonl_atomic
from .schema import KEY_OMITS_DEFAULT
from .teacher.base import GenRequest, SamplingParams, Teacher, TeacherConfig, make_teacher

INSTRUCTION = (
    "Write {m} different ways a customer could ask the question below. Keep its meaning and every detail "
    "it asks about; vary the wording, length and tone. One question per line, no numbering, nothing else.\n\n"
    "Question: {q}"
)

ANSWERS = ("teacher", "shared")  # who answers the new phrasings (AugmentConfig.answers)


@dataclass(frozen=True)
class AugmentConfig:
    """``per_prompt`` new phrasings of each training prompt (0 = off).

    ``answers``: who answers them. ``teacher``: the generate stage samples them like the training
    prompts (``generate.n`` decodes each, the costly part). ``shared``: the label stage gives each the
    accepted teacher answers of its source prompt's intent (``label.shared_answers``), no decoding."""

    per_prompt: int = 0
    answers: str = field(default="teacher", metadata=KEY_OMITS_DEFAULT)
    temperature: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    similarity: float = 0.85  # near-duplicate above this (normalised text ratio or word-set overlap)

    def validate(self) -> None:
        if isinstance(self.per_prompt, bool) or not isinstance(self.per_prompt, int) or self.per_prompt < 0:
            raise InvalidInput(f"per_prompt: must be a whole number >= 0, got {self.per_prompt!r}")
        if self.answers not in ANSWERS:
            raise InvalidInput(f"answers: must be one of {', '.join(ANSWERS)}, got {self.answers!r}")
        if not 0.0 < self.similarity <= 1.0:
            raise InvalidInput(f"similarity: must be in (0, 1], got {self.similarity!r}")
        if self.temperature < 0 or self.max_new_tokens < 16:
            raise InvalidInput("temperature must be >= 0 and max_new_tokens >= 16")


@dataclass
class AugmentResult:
    out: Path
    sources: int
    kept: int
    refused_eval: int  # near-duplicates of an eval prompt
    refused_duplicate: int  # the source again, or a near-duplicate of another training prompt
    seconds: float


def normalise(text: str) -> str:
    """Lowercase, NFKC, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def near_duplicate(a: str, b: str, similarity: float) -> bool:
    """The same question in all but spelling: normalised texts equal, a character-level ratio
    (difflib) at or above ``similarity``, or word sets overlapping that much (Jaccard)."""
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return True
    sm = SequenceMatcher(None, na, nb, autojunk=False)  # upper bounds first: the full ratio only when they pass
    if sm.real_quick_ratio() >= similarity and sm.quick_ratio() >= similarity and sm.ratio() >= similarity:
        return True
    wa, wb = set(na.split()), set(nb.split())
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) >= similarity


def parse_phrasings(text: str) -> list[str]:
    """One question per line; bullets, numbering and wrapping quotes removed; empty lines dropped."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*", "", line).strip().strip('"“”').strip()
        if 3 <= len(line.split()) <= 40 and not line.lower().startswith(("question:", "here are", "sure")):
            out.append(line)
    return out


class Blocklist:
    """Prompts a new phrasing must not be near: every eval prompt, and what training already holds."""

    def __init__(self, similarity: float):
        self.similarity = similarity
        self.texts: list[str] = []

    def add(self, text: str) -> None:
        self.texts.append(text)

    def hit(self, text: str) -> bool:
        return any(near_duplicate(text, t, self.similarity) for t in self.texts)


def select_phrasings(task: Task, raw: dict[str, str], cfg: AugmentConfig) -> tuple[list[PromptItem], int, int]:
    """(kept items, refused as eval near-duplicates, refused as duplicates), in training-prompt order."""
    evals, seen = Blocklist(cfg.similarity), Blocklist(cfg.similarity)
    for it in task.eval:
        evals.add(_text(it.prompt))
    for it in task.train:
        seen.add(_text(it.prompt))
    kept, refused_eval, refused_dup = [], 0, 0
    for it in task.train:
        n = 0
        for phrasing in parse_phrasings(raw.get(it.id, "")):
            if n == cfg.per_prompt:
                break
            if evals.hit(phrasing):
                refused_eval += 1
            elif seen.hit(phrasing):
                refused_dup += 1
            else:
                seen.add(phrasing)
                kept.append(PromptItem(f"{it.id}~p{n}", phrasing, it.reference, it.intent))
                n += 1
    return kept, refused_eval, refused_dup


def _text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt if m.get("role") == "user")


def run_augment(
    task: Task, cfg: AugmentConfig, out_dir: Path, teacher_cfg: TeacherConfig, teacher: Teacher | None = None,
    progress: bool = True,
) -> AugmentResult:  # fmt: skip
    """Ask the teacher for phrasings of every training prompt (resumable), then keep the new ones."""
    cfg.validate()
    t0 = time.perf_counter()
    if any(not isinstance(it.prompt, str) for it in task.train):
        raise InvalidInput("augment: needs plain-text training prompts (a chat-message prompt has no one question)")
    log = AppendLog(out_dir / "raw.jsonl")
    raw = {r["prompt_id"]: r["text"] for r in log.recover()}
    todo = [it for it in task.train if it.id not in raw]
    own = teacher is None
    if todo:
        teacher = teacher or make_teacher(teacher_cfg)
        sp = SamplingParams(n=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        reqs = [
            GenRequest(it.id, [{"role": "user", "content": INSTRUCTION.format(m=cfg.per_prompt + 2, q=it.prompt)}])
            for it in todo
        ]
        bar = tqdm(total=len(reqs), desc=f"augment ({teacher.name})", unit="prompt", disable=not progress)
        try:
            for i, _, text in teacher.stream(reqs, sp):
                log.append({"prompt_id": todo[i].id, "text": text})
                raw[todo[i].id] = text
                bar.update(1)
        finally:
            bar.close()
            log.close()
            if own:
                teacher.close()
    kept, refused_eval, refused_dup = select_phrasings(task, raw, cfg)
    out = out_dir / "prompts.jsonl"
    rows = [{"id": k.id, "prompt": k.prompt, "reference": k.reference, "intent": k.intent} for k in kept]
    write_jsonl_atomic(out, [{k: v for k, v in r.items() if v is not None} for r in rows])
    return AugmentResult(out, len(task.train), len(kept), refused_eval, refused_dup, time.perf_counter() - t0)
