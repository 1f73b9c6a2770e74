"""``golden.jsonl``: what the fp student does on held-out prompts, stored so that any artifact
can be checked against it later, on the server or on a device without torch.

Per prompt (token ids from the HF tokenizer's chat template, the ids every backend is fed):
- the fp greedy continuation (ids and text),
- the fp top-k next-token log-probs at every position of that continuation (for KL on the
  device, where the full fp distribution is not available),
- labelled completions (desirable / undesirable) with their fp summed log-probs (for
  preference agreement), and the task reference (for task accuracy).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import KTOExample, read_kto, read_prompts, read_task, to_messages
from ..jsonl import iter_jsonl


@dataclass
class GoldenPrompt:
    id: str
    messages: list[dict]
    reference: Any = None
    completions: list[tuple[str, bool]] | None = None


def _looks_like_kto(path: Path) -> bool:
    for _, obj in iter_jsonl(path):
        return isinstance(obj, dict) and ("label" in obj or "chosen" in obj)
    return False


def read_golden_prompts(source: str | Path, system: str | None = None, limit: int = 32) -> list[GoldenPrompt]:
    """Held-out prompts from a task folder (eval split), a prompt file, or KTO rows (grouped by prompt)."""
    p = Path(source)
    if p.is_dir():
        task = read_task(p)
        return [GoldenPrompt(it.id, to_messages(it.prompt, task.system), it.reference) for it in task.eval[:limit]]
    if _looks_like_kto(p):
        return kto_examples_to_golden(read_kto(p))[:limit]
    return [GoldenPrompt(it.id, to_messages(it.prompt, system), it.reference) for it in read_prompts(p)[:limit]]


def chat_ids(tok: Any, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@torch.no_grad()
def _summed_logp(model: Any, prompt_ids: list[int], completion_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    logp = torch.log_softmax(model(ids).logits[0, len(prompt_ids) - 1:-1].float(), dim=-1)
    return float(logp.gather(1, torch.tensor(completion_ids)[:, None]).sum())


@torch.no_grad()
def golden_row(model: Any, tok: Any, g: GoldenPrompt, max_new_tokens: int, top_k: int) -> dict[str, Any]:
    prompt_ids = chat_ids(tok, g.messages)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    greedy = out[0, len(prompt_ids):].tolist()
    # One forward over prompt + greedy: the distributions at every position the continuation was chosen from.
    logits = model(out).logits[0, len(prompt_ids) - 1:len(prompt_ids) - 1 + len(greedy)].float()
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, k=min(top_k, logp.shape[-1]), dim=-1)
    row: dict[str, Any] = {
        "id": g.id, "messages": g.messages, "prompt_ids": prompt_ids, "reference": g.reference,
        "greedy_ids": greedy, "greedy_text": tok.decode(greedy, skip_special_tokens=True),
        "top_logprobs": [[[int(i), round(float(v), 6)] for i, v in zip(ti, tv)] for ti, tv in zip(top.indices.tolist(), top.values.tolist())],
    }
    if g.completions:
        comps = []
        for text, label in g.completions:
            full = tok.apply_chat_template(g.messages + [{"role": "assistant", "content": text}], tokenize=True)
            full = list(full["input_ids"] if hasattr(full, "keys") else full)
            cids = full[len(prompt_ids):] if full[:len(prompt_ids)] == prompt_ids else tok(text, add_special_tokens=False)["input_ids"]
            comps.append({"text": text, "label": label, "ids": cids, "logp": round(_summed_logp(model, prompt_ids, cids), 6)})
        row["completions"] = comps
    return row


def build_golden(model: Any, tok: Any, prompts: list[GoldenPrompt], max_new_tokens: int = 64, top_k: int = 16,
                 progress: bool = True) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    model.eval()
    return [golden_row(model, tok, g, max_new_tokens, top_k) for g in tqdm(prompts, desc="golden set", disable=not progress)]


def kto_examples_to_golden(rows: list[KTOExample]) -> list[GoldenPrompt]:
    """Group KTO rows by prompt (used by the pipeline, which holds rows in memory)."""
    groups: OrderedDict[str, GoldenPrompt] = OrderedDict()
    for i, ex in enumerate(rows):
        g = groups.setdefault(repr(ex.prompt), GoldenPrompt(ex.id or f"row{i}", ex.prompt, ex.extra.get("reference"), []))
        g.completions.append((ex.completion, ex.label))  # type: ignore[union-attr]
    return list(groups.values())
