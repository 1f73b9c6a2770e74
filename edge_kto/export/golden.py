"""``golden.jsonl``: what the fp student does on held-out prompts, stored so that any artifact
can be checked against it later, on the server or on a device without torch.

Per prompt (token ids from the HF tokenizer's chat template, the ids every backend is fed):
- the fp greedy continuation (ids and text),
- the fp top-k next-token log-probs at every position of that continuation (for KL on the
  device, where the full fp distribution is not available),
- for a *finished* student (trained through the 4-bit grid, so its weights are no longer the fp
  student's), the same top-k of the finished fp weights (``exported_top_logprobs``): the KL and top-1
  of the gate measure what the runtime does to the weights it was given; behaviour (task accuracy,
  preference order) is still measured against the fp student, so finishing cannot hide a loss,
- labelled completions (desirable / undesirable) with their fp summed log-probs (for
  preference agreement), and the task reference (for task accuracy),
- *hard* pairs: a desirable answer and its near miss (the same text with one fact broken: a
  number in a reference phrase changed, or the phrase removed). Whole-answer pairs are separated
  by hundreds of nats, so their order never flips under quantization; a near miss differs by a
  token or two -- exactly what 4-bit rounding of a memorised fact breaks.

Task accuracy needs many prompts (one question is 0.5 points of 200) but only a greedy answer per
prompt; KL, top-1 and preference pairs are measured per token and reach thousands of positions on
a few dozen prompts, at several forward passes per prompt on each side. ``detail_limit`` keeps the
log-probs and completions on that many rows, spread evenly over the set (every intent of a task
whose eval file is grouped by intent); the other rows carry the greedy answer only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from edge_kto_runtime.completion import split_completion
from edge_kto_runtime.defaults import GOLDEN_MAX_NEW_TOKENS
from edge_kto_runtime.errors import InvalidInput

from ..data import KTOExample, read_kto, read_prompts, read_task, to_messages
from ..jsonl import iter_jsonl
from ..models.greedy import greedy_decode


@dataclass
class GoldenPrompt:
    id: str
    messages: list[dict]
    reference: Any = None
    completions: list[tuple[str, bool]] | None = None
    hard: list[tuple[int, str]] | None = None  # (index of a desirable completion, its near miss)
    split: str = "eval"  # "train": a training prompt, for the gate's agreement only (never for accuracy claims)


def looks_like_kto(path: Path) -> bool:
    for _, obj in iter_jsonl(path):
        return isinstance(obj, dict) and ("label" in obj or "chosen" in obj)
    return False


def read_golden_prompts(source: str | Path, system: str | None = None, limit: int = 32) -> list[GoldenPrompt]:
    """Held-out prompts from a task folder (eval split), a prompt file, or KTO rows (grouped by prompt)."""
    p = Path(source)
    if p.is_dir():
        task = read_task(p)
        return [GoldenPrompt(it.id, to_messages(it.prompt, task.system), it.reference) for it in task.eval[:limit]]
    if looks_like_kto(p):
        return kto_examples_to_golden(read_kto(p))[:limit]
    return [GoldenPrompt(it.id, to_messages(it.prompt, system), it.reference) for it in read_prompts(p)[:limit]]


def training_prompts(data: str | None, held_out: list[GoldenPrompt], limit: int) -> list[GoldenPrompt]:
    """Up to ``limit`` prompts of the training rows ``data`` that carry a reference, none of them a
    ``held_out`` prompt, marked ``split: train``."""
    if not data:
        raise InvalidInput("golden_train_limit: the export source records no training rows to take prompts from")
    seen = {repr(g.messages) for g in held_out}
    out = []
    for g in kto_examples_to_golden(read_kto(data)):
        if g.reference is not None and repr(g.messages) not in seen and len(out) < limit:
            g.split = "train"
            out.append(g)
    return out


def chat_ids(tok: Any, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _completion_ids(tok: Any, messages: list[dict], prompt_ids: list[int], text: str) -> list[int]:
    """The assistant turn's tokens exactly as training saw them (full rendering minus the prompt)."""
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": text}], tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    return split_completion(prompt_ids, full, tok.eos_token_id)[1]  # the training rule (edge_kto_runtime.completion)


@torch.no_grad()
def _top_logprobs(
    model: Any, prompts: list[list[int]], greedy: list[list[int]], k: int
) -> list[list[list[list[float]]]]:
    """fp top-k log-probs at each position a greedy token was chosen; the LM head only runs there."""
    from ..train.logps import causal_lm_parts

    if not prompts:
        return []
    backbone, head = causal_lm_parts(model)
    width = max(len(p) + len(g) for p, g in zip(prompts, greedy))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, (p, g) in enumerate(zip(prompts, greedy)):
        ids[i, : len(p) + len(g)] = torch.tensor(p + g)
        att[i, : len(p) + len(g)] = 1
    hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    out = []
    for i, (p, g) in enumerate(zip(prompts, greedy)):
        logp = torch.log_softmax(head(hidden[i, len(p) - 1 : len(p) - 1 + len(g)]).float(), dim=-1)
        top = torch.topk(logp, k=min(k, logp.shape[-1]), dim=-1)
        out.append(
            [
                [[int(t), round(float(v), 6)] for t, v in zip(ti, tv)]
                for ti, tv in zip(top.indices.tolist(), top.values.tolist())
            ]
        )
    return out


@torch.no_grad()
def _summed_logps(model: Any, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    from ..train.batches import pad_pairs
    from ..train.logps import CompletionLogps

    if not pairs:
        return []
    return CompletionLogps(model)(*pad_pairs(pairs, pad_id, max_length=10**9)).tolist()


def near_miss(text: str, reference: Any) -> str | None:
    """``text`` with one reference fact broken: the last digit of the first phrase found changed
    (10 seconds -> 11 seconds), or, for a phrase without digits, the phrase removed."""
    phrases = (
        list(reference)
        if isinstance(reference, list)
        else [reference]
        if isinstance(reference, (str, int, float))
        else []
    )
    low = text.lower()
    for ph in (str(p) for p in phrases):
        i = low.find(ph.lower()) if ph.strip() else -1
        if i < 0:
            continue
        orig = text[i : i + len(ph)]
        digits = [k for k, ch in enumerate(orig) if ch.isdigit()]
        if digits:
            return (
                text[:i]
                + orig[: digits[-1]]
                + str((int(orig[digits[-1]]) + 1) % 10)
                + orig[digits[-1] + 1 :]
                + text[i + len(ph) :]
            )
        head, tail = text[:i], text[i + len(ph) :]
        return head.rstrip(" ") + " " + tail.lstrip(" ") if head.endswith(" ") and tail.startswith(" ") else head + tail
    return None


def with_hard_pairs(prompts: list[GoldenPrompt], verifier: Callable[[str, Any], bool]) -> list[GoldenPrompt]:
    """Add one near miss per prompt (of its first desirable answer that has one the verifier rejects)."""
    for g in prompts:
        if g.reference is None or not g.completions:
            continue
        for k, (text, label) in enumerate(list(g.completions)):
            miss = near_miss(text, g.reference) if label else None
            if miss and miss != text and verifier(text, g.reference) and not verifier(miss, g.reference):
                g.hard = g.hard or []
                g.hard.append((k, miss))
                break
    return prompts


def build_golden(
    model: Any,
    tok: Any,
    prompts: list[GoldenPrompt],
    max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS,
    top_k: int = 16,
    progress: bool = True,
    batch_size: int = 16,
    exported: Any = None,
    detail_limit: int | None = None,
) -> list[dict[str, Any]]:
    """Golden rows for ``prompts``: every greedy answer first (:func:`greedy_decode`, its own batches),
    then the log-probs and completion scores in batches of ``batch_size``.

    ``exported``: the fp model the artifacts are made from, when it is not ``model`` (a finished
    student); its top-k on the same positions goes into ``exported_top_logprobs`` and its own greedy
    answer into ``exported_greedy_text`` (the gate's paired reference for the export's own loss).
    ``detail_limit``: only the rows :func:`detail_rows` picks among the eval prompts get log-probs
    and completions."""
    from tqdm.auto import tqdm

    model.eval()
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tok.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    rows: list[dict[str, Any]] = []
    evals = [i for i, g in enumerate(prompts) if g.split == "eval"]
    detail = {evals[j] for j in detail_rows(len(evals), detail_limit)}
    all_pids = [chat_ids(tok, g.messages) for g in prompts]

    def bar_label(what: str) -> str | None:
        return what if progress else None

    all_greedy = greedy_decode(model, all_pids, max_new_tokens, pad_id, eos_ids, desc=bar_label("golden: fp answers"))
    exp_greedy = None
    if exported is not None:  # the weights the artifacts store: the paired reference of the export's own loss
        exp_greedy = greedy_decode(
            exported.eval(), all_pids, max_new_tokens, pad_id, eos_ids, desc=bar_label("golden: stored weights")
        )
    bar = tqdm(total=len(prompts), desc="golden set", unit="prompt", disable=not progress)
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        pids, greedy = all_pids[s : s + batch_size], all_greedy[s : s + batch_size]
        sel = [j for j in range(len(chunk)) if s + j in detail]  # the rows that carry log-probs
        sel_p, sel_g = [pids[j] for j in sel], [greedy[j] for j in sel]
        tops = dict(zip(sel, _top_logprobs(model, sel_p, sel_g, top_k)))
        exp_tops = dict(zip(sel, _top_logprobs(exported.eval(), sel_p, sel_g, top_k))) if exported is not None else {}
        comps = [
            [(text, label, _completion_ids(tok, g.messages, p, text), None) for text, label in (g.completions or [])]
            + [(miss, False, _completion_ids(tok, g.messages, p, miss), k) for k, miss in (g.hard or [])]
            if j in tops
            else []
            for j, (g, p) in enumerate(zip(chunk, pids))
        ]
        logps = iter(_summed_logps(model, [(p, c[2]) for p, cs in zip(pids, comps) for c in cs], pad_id))
        for j, (g, p, gr, cs) in enumerate(zip(chunk, pids, greedy, comps)):
            row: dict[str, Any] = {
                "id": g.id,
                "messages": g.messages,
                "prompt_ids": p,
                "reference": g.reference,
                "greedy_ids": gr,
                "greedy_text": tok.decode(gr, skip_special_tokens=True),
            }
            if g.split != "eval":
                row["split"] = g.split
            if exp_greedy is not None:
                row["exported_greedy_ids"] = exp_greedy[s + j]
                row["exported_greedy_text"] = tok.decode(exp_greedy[s + j], skip_special_tokens=True)
            if j in tops:
                row["top_logprobs"] = tops[j]
            if j in exp_tops:
                row["exported_top_logprobs"] = exp_tops[j]
            if cs:
                row["completions"] = [
                    {
                        "text": t,
                        "label": lab,
                        "ids": ids,
                        "logp": round(next(logps), 6),
                        **({"hard": True, "near_miss_of": k} if k is not None else {}),
                    }
                    for t, lab, ids, k in cs
                ]
            rows.append(row)
        bar.update(len(chunk))
    bar.close()
    return rows


def detail_rows(n: int, limit: int | None) -> set[int]:
    """Which of ``n`` golden rows carry log-probs and completions: all, or ``limit`` evenly spaced."""
    if limit is None or limit >= n:
        return set(range(n))
    return {i * n // limit for i in range(max(limit, 0))}


def kto_examples_to_golden(rows: list[KTOExample]) -> list[GoldenPrompt]:
    """Group KTO rows by prompt (used by the pipeline, which holds rows in memory)."""
    groups: OrderedDict[str, GoldenPrompt] = OrderedDict()
    for i, ex in enumerate(rows):
        g = groups.setdefault(
            repr(ex.prompt), GoldenPrompt(ex.id or f"row{i}", ex.prompt, ex.extra.get("reference"), [])
        )
        g.completions.append((ex.completion, ex.label))  # type: ignore[union-attr]
    return list(groups.values())
