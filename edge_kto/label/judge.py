"""An LLM judge over any Teacher backend: a rubric prompt and a strict yes/no parse.

A verdict that cannot be parsed is returned as ``None`` and counted by the label stage,
never guessed: a silent default would bias the class balance KTO depends on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..data import Messages
from ..teacher.base import GenRequest, SamplingParams, Teacher

DEFAULT_RUBRIC = (
    "You are grading an assistant's answer. Decide whether the answer is correct, helpful and "
    "consistent with the reference (if one is given). Reply with a single word on the last line: "
    "VERDICT: yes  or  VERDICT: no"
)

_VERDICT = re.compile(r"verdict\s*[:=\-]?\s*\**\s*(yes|no)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """``VERDICT: yes/no`` anywhere (the last one wins), else a reply that starts with yes/no."""
    found = _VERDICT.findall(text)
    if found:
        return found[-1].lower() == "yes"
    m = _BARE.match(text.strip())
    if m:
        return m.group(1).lower() == "yes"
    return None


@dataclass
class LLMJudge:
    teacher: Teacher
    rubric: str = DEFAULT_RUBRIC
    max_new_tokens: int = 64

    def messages(self, prompt: Messages, completion: str, reference: Any) -> Messages:
        question = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
        ref = f"\n\nReference: {reference}" if reference not in (None, "", []) else ""
        user = f"Conversation:\n{question}\n\nAnswer to grade:\n{completion}{ref}"
        return [{"role": "system", "content": self.rubric}, {"role": "user", "content": user}]

    def judge(self, rows: list[dict]) -> list[bool | None]:
        params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=self.max_new_tokens)
        reqs = [
            GenRequest(str(r.get("id", i)), self.messages(r["prompt"], r["completion"], r.get("reference")), [0])
            for i, r in enumerate(rows)
        ]
        verdicts: list[bool | None] = []
        for start in range(0, len(reqs), self.teacher.batch_size):
            outs = self.teacher.generate(reqs[start : start + self.teacher.batch_size], params)
            verdicts.extend(parse_verdict(o[0]) for o in outs)
        return verdicts
