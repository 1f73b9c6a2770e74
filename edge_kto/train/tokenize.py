"""Turn KTO rows into (prompt ids, completion ids) the way the model sees them at inference.

The prompt is rendered with the chat template and the generation prompt; the completion is
the rendering of prompt + assistant turn minus that prefix, by the one rule the golden set and the
runtime also use (``edge_kto_runtime.completion``); a template that breaks the prefix property is
warned about once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edge_kto_runtime.completion import split_completion

from ..data import KTOExample

log = logging.getLogger(__name__)


@dataclass
class Tokenized:
    prompt_ids: list[int]
    completion_ids: list[int]
    label: bool
    index: int  # position in the input rows (stable id for caches and resume)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


@dataclass
class TokenizeReport:
    kept: int = 0
    prompt_too_long: int = 0
    no_completion_left: int = 0
    truncated: int = 0
    prefix_mismatch: int = 0
    examples: list[Tokenized] = field(default_factory=list)


def _ids(tok: Any, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def tokenize_example(
    tok: Any, ex: KTOExample, index: int, max_length: int, max_prompt_length: int, report: TokenizeReport
) -> Tokenized | None:
    prompt = _ids(tok, ex.prompt, add_generation_prompt=True)
    full = _ids(tok, ex.prompt + [{"role": "assistant", "content": ex.completion}], add_generation_prompt=False)
    prompt_ids, completion_ids = split_completion(prompt, full, tok.eos_token_id)  # the one rule (runtime)
    if len(prompt_ids) < len(prompt):
        report.prefix_mismatch += 1
        if report.prefix_mismatch == 1:
            log.warning(
                "chat template: the prompt alone is not a prefix of prompt+completion; splitting where they "
                "diverge (left out of training: %r)",
                tok.decode(prompt[len(prompt_ids) :]),
            )
    if len(prompt_ids) > max_prompt_length or len(prompt_ids) >= max_length:
        report.prompt_too_long += 1
        return None
    room = max_length - len(prompt_ids)
    if len(completion_ids) > room:
        report.truncated += 1
        completion_ids = completion_ids[:room]
    if not completion_ids:
        report.no_completion_left += 1
        return None
    report.kept += 1
    return Tokenized(prompt_ids, completion_ids, ex.label, index)


def tokenize_all(tok: Any, rows: list[KTOExample], max_length: int, max_prompt_length: int) -> TokenizeReport:
    report = TokenizeReport()
    for i, ex in enumerate(rows):
        t = tokenize_example(tok, ex, i, max_length, max_prompt_length, report)
        if t is not None:
            report.examples.append(t)
    return report
