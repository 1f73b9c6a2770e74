"""Batched greedy decoding in torch that stops computing a row once it has ended.

Why not ``model.generate``: it keeps every row of a batch in every step until the longest answer
ends; on the demo's 200 eval prompts (answers 41 tokens on average, at most 96) one batch of 200
spends 58% of its row-steps extending answers that have ended. Here a row leaves the batch (and
its KV cache, ``DynamicCache.batch_select_indices``) at its EOS, and batches are formed from
prompts of similar length so little prefill goes to left padding. Greedy answers are a function
of the prompt, like ``generate``'s; a row's float sums can differ in the last bit with the batch it
shares (matmul blocking), as they can between two ``generate`` batch sizes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

#: rows decoded together: on 2 cores a 135M model's HF decode gains up to ~64-100 rows per batch
#: (SmolLM2-135M, 200 prompts: ``generate`` 16 rows 92 s, 100 rows 59 s; here 64 rows 46 s, 128 rows 37 s)
GREEDY_BATCH = 128


@torch.inference_mode()
def greedy_decode(
    model: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: set[int],
    batch_size: int = GREEDY_BATCH,
    desc: str | None = None,
) -> list[list[int]]:
    """Greedy continuation ids of each prompt, in order; each row ends with its first EOS (kept) or
    after ``max_new_tokens``. ``desc``: show a progress bar over prompts with this label."""
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens < 1:
        return out
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=desc is None)
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for j, i in enumerate(rows):
            ids[j, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            att[j, width - len(prompts[i]) :] = 1
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        cache = {_cache_argument(model): DynamicCache()}
        logits = model(
            input_ids=ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=1, **cache
        ).logits[:, -1]
        active = list(rows)
        nxt_pos = pos[:, -1:] + 1
        while True:
            nxt = logits.argmax(-1)
            keep = []
            for j, (i, t) in enumerate(zip(active, nxt.tolist())):
                out[i].append(t)
                if t not in eos_ids and len(out[i]) < max_new_tokens:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                sel = torch.tensor(keep)
                next(iter(cache.values())).batch_select_indices(sel)
                att, nxt, nxt_pos = att[sel], nxt[sel], nxt_pos[sel]
                active = [active[j] for j in keep]
            att = torch.cat([att, torch.ones((len(active), 1), dtype=att.dtype)], dim=-1)
            logits = model(
                input_ids=nxt[:, None],
                attention_mask=att,
                position_ids=nxt_pos,
                use_cache=True,
                **cache,
            ).logits[:, -1]
            nxt_pos = nxt_pos + 1
        bar.update(len(rows))
    bar.close()
    return out


def _cache_argument(model: Any) -> str:
    """``cache`` in newer transformers 5.x releases, ``past_key_values`` before (deprecated since)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
