"""Confusions as explicit negatives: another intent's right answer, given to this intent's question.

The failure a support student shows most is not silence but the wrong intent's facts ("to change the
sensor's battery, go to Profile > Security > Reset Password"). KTO can be told so directly: for each
training prompt, ``k`` answers the teacher got right for *other* intents become undesirable rows for
this prompt. No generation is needed, only the labelled rows. A candidate that the prompt's own
verifier would accept (two intents sharing a fact) is never used. Choice is seeded by prompt id, so
the same rows give the same file.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable


def intent_key(row: dict[str, Any]) -> str:
    """A row's intent: its ``intent`` field, else its reference (rows with one reference ask one thing)."""
    return row.get("intent") or json.dumps(row.get("reference"), sort_keys=True)


def seeded_order(pool: list[dict[str, Any]], salt: str) -> list[dict[str, Any]]:
    """``pool`` shuffled by a seed drawn from ``salt`` (the same rows give the same file)."""
    rng = random.Random(int.from_bytes(hashlib.sha256(salt.encode()).digest()[:8], "little"))
    pool = list(pool)
    rng.shuffle(pool)
    return pool


def answer_row(prompt_row: dict[str, Any], donor: dict[str, Any], row_id: str, kind: str) -> dict[str, Any]:
    """``donor``'s answer given to ``prompt_row``'s prompt, judged by the prompt's own reference and
    verifier; ``source`` is ``<kind>:<donor prompt id>`` (whose answer it was)."""
    row = {
        "id": row_id,
        "prompt_id": prompt_row["prompt_id"],
        "prompt": prompt_row["prompt"],
        "completion": donor["completion"],
        "reference": prompt_row.get("reference"),
        "verifier": prompt_row.get("verifier"),
        "source": f"{kind}:{donor['prompt_id']}",
    }
    if prompt_row.get("intent"):
        row["intent"] = prompt_row["intent"]
    return row


def confusion_negatives(rows: list[dict[str, Any]], k: int, verify: Callable[[dict[str, Any]], bool]) -> list[dict]:
    """Up to ``k`` undesirable rows per training prompt, each another intent's accepted teacher answer.

    ``rows``: labelled rows (``label`` set); ``verify(row)``: the prompt's own verifier on a row.
    Only teacher rows are drawn from (a student's right answer may still be odd), once per prompt.
    """
    donors: dict[str, list[dict[str, Any]]] = {}
    prompts: dict[str, dict[str, Any]] = {}
    for r in rows:
        prompts.setdefault(r["prompt_id"], r)
        if r["label"] is True and str(r.get("source", "")).startswith("teacher") and not r.get("negative_of"):
            donors.setdefault(intent_key(r), []).append(r)
    out = []
    for pid, r in prompts.items():
        own = intent_key(r)
        pool = [d for key, ds in sorted(donors.items()) if key != own for d in ds]
        picked, used = 0, set()
        for d in seeded_order(pool, f"negatives:{pid}"):
            if picked == k:
                break
            if d["completion"] in used:
                continue
            row = {**answer_row(r, d, f"{pid}#x{picked}", "confusion"), "negative_of": intent_key(d)}
            if verify(row):  # the other intent's answer also satisfies this prompt: not a confusion
                continue
            used.add(d["completion"])
            out.append({**row, "label": False, "labeler": "confusion"})
            picked += 1
    return out
