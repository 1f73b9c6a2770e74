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
        rng = random.Random(int.from_bytes(hashlib.sha256(f"negatives:{pid}".encode()).digest()[:8], "little"))
        rng.shuffle(pool)
        picked, used = 0, set()
        for d in pool:
            if picked == k:
                break
            if d["completion"] in used:
                continue
            row = {
                "id": f"{pid}#x{picked}",
                "prompt_id": pid,
                "prompt": r["prompt"],
                "completion": d["completion"],
                "reference": r.get("reference"),
                "verifier": r.get("verifier"),
                "source": f"confusion:{d['prompt_id']}",  # whose answer it is
                "negative_of": intent_key(d),
            }
            if verify(row):  # the other intent's answer also satisfies this prompt: not a confusion
                continue
            if r.get("intent"):
                row["intent"] = r["intent"]
            used.add(d["completion"])
            out.append({**row, "label": False, "labeler": "confusion"})
            picked += 1
    return out
