"""Shared answers: a right answer to one phrasing of a question is a right answer to the others.

The teacher gets some training prompts wrong every time it is asked (on the demo a third of them with
2 samples), and a student that saw an intent's facts on only some of its phrasings answers the others
with a neighbour's. Within one intent the facts a right answer states are the same, so an answer the
labeler accepted for one phrasing can be given to another phrasing, as long as *that* prompt's own
verifier accepts it too (the rule, not the intent name, decides). This costs no generation: each
training prompt is filled up to ``k`` desirable rows from its intent's accepted teacher answers, the
ones it does not already have, seeded by prompt id.

New phrasings written by the ``augment`` stage with ``answers: shared`` are answered the same way,
without the teacher decoding for them: their rows are the source prompt's messages with the user turn
replaced by the phrasing.
"""

from __future__ import annotations

from typing import Any, Callable

from .negatives import answer_row, intent_key, seeded_order


def phrasing_rows(rows: list[dict[str, Any]], phrasings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One prompt row (no completion) per new phrasing: its source prompt's messages, user turn replaced.

    ``phrasings``: the augment stage's ``prompts.jsonl`` rows (``id`` = ``<source id>~p<n>``)."""
    by_prompt = {r["prompt_id"]: r for r in rows}
    out = []
    for p in phrasings:
        src = by_prompt.get(p["id"].split("~")[0])
        if src is None:  # the source prompt has no row (a limit cut it): nothing to copy the messages from
            continue
        messages = [dict(m) for m in src["prompt"]]
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        messages[users[-1]]["content"] = p["prompt"]
        row = {
            "prompt_id": p["id"],
            "prompt": messages,
            "reference": p.get("reference"),
            "verifier": src.get("verifier"),
        }
        if p.get("intent") or src.get("intent"):
            row["intent"] = p.get("intent") or src.get("intent")
        out.append(row)
    return out


def shared_positives(
    rows: list[dict[str, Any]],
    k: int,
    verify: Callable[[dict[str, Any]], bool],
    extra_prompts: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Desirable rows that bring each prompt up to ``k`` accepted answers, drawn from its intent.

    ``rows``: labelled rows (``label`` set); ``verify(row)``: the prompt's own verifier on a row;
    ``extra_prompts``: prompt rows without answers (:func:`phrasing_rows`), filled the same way.
    Only teacher answers are shared (a student's right answer may still be odd)."""
    donors: dict[str, list[dict[str, Any]]] = {}
    prompts: dict[str, dict[str, Any]] = {}
    have: dict[str, set[str]] = {}
    for r in rows:
        prompts.setdefault(r["prompt_id"], r)
        if r["label"] is True:
            have.setdefault(r["prompt_id"], set()).add(r["completion"].strip())
            if str(r.get("source", "")).startswith("teacher"):
                donors.setdefault(intent_key(r), []).append(r)
    for p in extra_prompts or []:
        prompts.setdefault(p["prompt_id"], p)
    out = []
    for pid, r in prompts.items():
        own = have.get(pid, set())
        if len(own) >= k:
            continue
        pool = [d for d in donors.get(intent_key(r), []) if d["prompt_id"] != pid]
        for d in seeded_order(pool, f"shared:{pid}"):
            if len(own) >= k:
                break
            text = d["completion"].strip()
            if text in own:
                continue
            row = answer_row(r, d, f"{pid}#h{len(own)}", "shared")
            if not verify(row):  # this prompt asks for something the donor's answer does not state
                continue
            own.add(text)
            out.append({**row, "label": True, "labeler": "shared"})
    return out
