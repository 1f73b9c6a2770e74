"""Data formats: KTO rows (unpaired, ms-swift, paired), teacher prompt files and task folders.

Formats are detected per row, the same shapes TRL and ms-swift users already have. Every
problem is reported as ``file:line: field 'x': ...``; all problems in a file are collected
before raising so a user fixes the file in one pass.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from edge_kto_runtime.errors import MissingInput
from edge_kto_runtime.verifiers import BUILTIN

from .jsonl import DataError, DataIssue, iter_jsonl

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]
VERIFIERS = tuple(BUILTIN)  # the runtime's registry: one list of built-in verifier names


@dataclass
class KTOExample:
    """One unpaired KTO row: a prompt (chat messages), a completion and whether it is desirable."""

    prompt: Messages
    completion: str
    label: bool
    id: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "completion": self.completion, "label": self.label}
        if self.source is not None:
            row["source"] = self.source
        row.update(self.extra)
        return row


@dataclass
class PromptItem:
    """A prompt for the teacher. ``reference`` is whatever the task's verifier needs."""

    id: str
    prompt: Prompt
    reference: Any = None
    intent: str | None = None  # optional label; items without one are grouped by their reference


@dataclass
class Task:
    """A verifiable task folder (task.json + train.jsonl + eval.jsonl)."""

    name: str
    teacher_context: str
    system: str | None
    verifier: str
    train: list[PromptItem]
    eval: list[PromptItem]
    path: Path | None = None


def to_messages(prompt: Prompt, system: str | None = None) -> Messages:
    """Normalise a prompt to chat messages, adding ``system`` first when the prompt has none."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


# ---------------------------------------------------------------- validation helpers


class _Checker:
    def __init__(self, path: str):
        self.path = path
        self.issues: list[DataIssue] = []

    def bad(self, line: int, fld: str | None, msg: str) -> None:
        self.issues.append(DataIssue(self.path, line, fld, msg))

    def messages(self, line: int, fld: str, value: Any) -> Messages | None:
        if not isinstance(value, list) or not value:
            self.bad(line, fld, "must be a non-empty list of {role, content} messages")
            return None
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                self.bad(line, f"{fld}[{i}]", "each message must be an object with string 'role' and 'content'")
                return None
        return value

    def prompt(self, line: int, fld: str, value: Any) -> Messages | None:
        if value is None:
            self.bad(line, fld, "missing")
            return None
        if isinstance(value, str):
            if not value.strip():
                self.bad(line, fld, "is empty")
                return None
            return to_messages(value)
        return self.messages(line, fld, value)

    def completion(self, line: int, fld: str, value: Any) -> str | None:
        if value is None:
            self.bad(line, fld, "missing")
            return None
        if isinstance(value, list):  # TRL conversational: [{"role": "assistant", "content": ...}]
            msgs = self.messages(line, fld, value)
            if msgs is None:
                return None
            value = "".join(m["content"] for m in msgs if m["role"] == "assistant")
        if not isinstance(value, str):
            self.bad(line, fld, f"must be a string or a list of messages, got {type(value).__name__}")
            return None
        if not value.strip():
            self.bad(line, fld, "empty completion")
            return None
        return value

    def label(self, line: int, value: Any, fld: str = "label") -> bool | None:
        if value is None:
            self.bad(line, fld, "missing")
            return None
        if not isinstance(value, bool):
            self.bad(line, fld, f"must be a JSON boolean (true/false), got {type(value).__name__} {json.dumps(value)}")
            return None
        return value

    def unique_id(self, line: int, value: Any, seen: dict[str, int]) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            self.bad(line, "id", f"must be a string, got {type(value).__name__}")
            return None
        sid = str(value)
        if sid in seen:
            self.bad(line, "id", f"duplicate id {sid!r} (first seen on line {seen[sid]})")
            return None
        seen[sid] = line
        return sid


_PROVENANCE_KEYS = ("source", "prompt_id", "sample_index", "sampling", "reference", "verdict")


# ---------------------------------------------------------------- KTO rows


def read_kto(path: str | Path, seed: int = 0) -> list[KTOExample]:
    """Read KTO training rows in any accepted format.

    Paired rows become two unpaired rows; when a file holds paired rows the result is
    shuffled (seeded) so batches never see one class in a block.
    """
    chk = _Checker(str(path))
    seen: dict[str, int] = {}
    out: list[KTOExample] = []
    had_pairs = False
    for line, obj in iter_jsonl(path, chk.issues):
        rid = chk.unique_id(line, obj.get("id"), seen)
        extra = {k: obj[k] for k in _PROVENANCE_KEYS if k in obj and k != "source"}
        if "chosen" in obj or "rejected" in obj:
            had_pairs = True
            p = chk.prompt(line, "prompt", obj.get("prompt"))
            c = chk.completion(line, "chosen", obj.get("chosen"))
            r = chk.completion(line, "rejected", obj.get("rejected"))
            if p is not None and c is not None and r is not None:
                base = rid or f"line{line}"
                out.append(KTOExample(p, c, True, f"{base}#chosen", obj.get("source"), extra))
                out.append(KTOExample(p, r, False, f"{base}#rejected", obj.get("source"), extra))
            continue
        if "messages" in obj:
            msgs = chk.messages(line, "messages", obj.get("messages"))
            lab = chk.label(line, obj.get("label"))
            if msgs is None:
                continue
            if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
                chk.bad(
                    line,
                    "messages",
                    "the last message must be the assistant's completion, after at least one prompt message",
                )
                continue
            comp = chk.completion(line, "messages[-1].content", msgs[-1]["content"])
            if comp is not None and lab is not None:
                out.append(KTOExample(msgs[:-1], comp, lab, rid, obj.get("source"), extra))
            continue
        if "completion" not in obj and "prompt" not in obj:
            chk.bad(
                line,
                None,
                "unrecognised row: expected {prompt, completion, label}, {messages, label} or {prompt, chosen, "
                "rejected}",
            )
            continue
        p = chk.prompt(line, "prompt", obj.get("prompt"))
        c = chk.completion(line, "completion", obj.get("completion"))
        lab = chk.label(line, obj.get("label"))
        if p is not None and c is not None and lab is not None:
            out.append(KTOExample(p, c, lab, rid, obj.get("source"), extra))
    if chk.issues:
        raise DataError(chk.issues)
    if had_pairs:
        random.Random(seed).shuffle(out)
    return out


# ---------------------------------------------------------------- teacher prompts and tasks


def read_prompts(path: str | Path) -> list[PromptItem]:
    """Read a teacher prompt file: ``{"id"?, "prompt": str|messages, "reference"?}`` per line.

    A row without ``id`` gets ``line<N>``: stable as long as the file is not reordered,
    which is what resuming a generation run needs.
    """
    chk = _Checker(str(path))
    seen: dict[str, int] = {}
    out: list[PromptItem] = []
    for line, obj in iter_jsonl(path, chk.issues):
        rid = chk.unique_id(line, obj.get("id"), seen)
        if obj.get("id") is None:
            rid = f"line{line}"
            if rid in seen:
                chk.bad(line, "id", f"implicit id {rid!r} collides with an explicit id")
            seen[rid] = line
        p, intent = obj.get("prompt"), obj.get("intent")
        if intent is not None and not isinstance(intent, str):
            chk.bad(line, "intent", f"must be a string, got {type(intent).__name__}")
        if p is None:
            chk.bad(line, "prompt", "missing")
        elif isinstance(p, str):
            if not p.strip():
                chk.bad(line, "prompt", "is empty")
            elif rid is not None:
                out.append(PromptItem(rid, p, obj.get("reference"), intent))
        elif chk.messages(line, "prompt", p) is not None and rid is not None:
            out.append(PromptItem(rid, p, obj.get("reference"), intent))
    if chk.issues:
        raise DataError(chk.issues)
    if not out:
        raise DataError([DataIssue(str(path), 0, None, "no prompts in file")])
    return out


def read_task(folder: str | Path) -> Task:
    """Read a task folder; any folder in this shape plugs into the pipeline unchanged."""
    folder = Path(folder)
    spec_path = folder / "task.json"
    if not spec_path.exists():
        raise MissingInput(f"{spec_path}: no such file (a task folder needs task.json, train.jsonl, eval.jsonl)")
    if not spec_path.is_file():
        raise DataError([DataIssue(str(spec_path), 0, None, "is not a file")])
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError([DataIssue(str(spec_path), 0, None, f"not UTF-8 (byte {e.start})")]) from None
    except json.JSONDecodeError as e:
        raise DataError([DataIssue(str(spec_path), e.lineno, None, f"invalid JSON ({e.msg})")]) from None
    if not isinstance(spec, dict):
        raise DataError([DataIssue(str(spec_path), 1, None, f"must be a JSON object, got {type(spec).__name__}")])
    issues = []
    for key in ("name", "verifier"):
        if not isinstance(spec.get(key), str):
            issues.append(DataIssue(str(spec_path), 1, key, "missing or not a string"))
    for key in ("teacher_context", "system"):  # optional; a string when given
        if spec.get(key) is not None and not isinstance(spec[key], str):
            issues.append(DataIssue(str(spec_path), 1, key, f"must be a string, got {type(spec[key]).__name__}"))
    if isinstance(spec.get("verifier"), str) and spec["verifier"] not in VERIFIERS:
        issues.append(
            DataIssue(
                str(spec_path), 1, "verifier", f"unknown verifier {spec['verifier']!r}; one of {', '.join(VERIFIERS)}"
            )
        )
    if issues:
        raise DataError(issues)
    train, evl = read_prompts(folder / "train.jsonl"), read_prompts(folder / "eval.jsonl")
    overlap = {_norm(p.prompt) for p in train} & {_norm(p.prompt) for p in evl}
    if overlap:
        raise DataError(
            [
                DataIssue(
                    str(folder / "eval.jsonl"),
                    0,
                    "prompt",
                    f"{len(overlap)} eval prompt(s) also appear in train.jsonl, e.g. {sorted(overlap)[0]!r}",
                )
            ]
        )
    return Task(
        spec["name"], spec.get("teacher_context") or "", spec.get("system"), spec["verifier"], train, evl, folder
    )


def _norm(prompt: Prompt) -> str:
    return prompt.strip().lower() if isinstance(prompt, str) else json.dumps(prompt)
