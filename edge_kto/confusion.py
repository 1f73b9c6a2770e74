"""Confusions: a wrong answer that carries another intent's facts.

A support student that answers "how do I change the sensor's battery?" with the password-reset steps
is worse than one that says nothing useful: it is confidently wrong. Accuracy does not tell the two
apart; this does. It needs only the task folder: an item's intent is its ``intent`` field, or, where
a row has none, its reference (items with the same reference ask the same thing). The phrases are
the references of the ``contains_all`` verifier, matched as that verifier matches them.
"""

from __future__ import annotations

import json
from typing import Any

from edge_kto_runtime.verifiers import fold

from .data import PromptItem, Task


def intent_of(item: PromptItem) -> str:
    return item.intent if item.intent else json.dumps(item.reference, sort_keys=True)


def _phrases(reference: Any) -> list[str]:
    ref = [reference] if isinstance(reference, str) else list(reference or [])
    return [p for p in (fold(r).strip() for r in ref) if p]


class ConfusionRule:
    """Decides, per answer, whether it is a confusion: not correct, and it contains a reference phrase
    that belongs only to other intents (a phrase two intents share says nothing about which was meant)."""

    def __init__(self, items: list[PromptItem]):
        self.phrases: dict[str, set[str]] = {}
        for it in items:
            self.phrases.setdefault(intent_of(it), set()).update(_phrases(it.reference))

    def foreign(self, item: PromptItem, answer: str) -> list[str]:
        """Other intents' phrases found in ``answer`` (none of them also ``item``'s own)."""
        own = self.phrases.get(intent_of(item), set()) | set(_phrases(item.reference))
        hay = fold(answer)
        return sorted(
            {p for k, ps in self.phrases.items() if k != intent_of(item) for p in ps if p not in own and p in hay}
        )

    def confused(self, item: PromptItem, answer: str, correct: bool) -> bool:
        return not correct and bool(self.foreign(item, answer))


def confusion_rule(task: Task) -> ConfusionRule | None:
    """The rule for a task whose verifier checks reference phrases; None for any other verifier."""
    if task.verifier != "contains_all":
        return None
    return ConfusionRule(task.train + task.eval)
