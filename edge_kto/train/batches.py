"""Batch planning and collation.

The whole run's batch plan is a pure function of (examples, batch size, seed), so every process
computes the same plan, a resumed run continues at the same place, and the mismatched pairs for
z0 are formed over the *global* micro-batch: row i is paired with the completion of row i+1
(wrapping). That is why 2 processes give the same z0 as 1 process on the union batch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from .tokenize import Tokenized


def _mixed_length_batches(part: list[int], examples: list[Tokenized], global_batch: int) -> list[list[int]]:
    """Cut ``part`` into batches of similar length *within each class*, every batch holding both
    classes in the chunk's proportion: sorting by length alone would make one-class batches
    whenever desirable and undesirable completions differ in length (they usually do)."""
    nb = len(part) // global_batch
    by_len = lambda idx: sorted(idx, key=lambda i: examples[i].length)  # noqa: E731
    good = by_len([i for i in part if examples[i].label])
    bad = by_len([i for i in part if not examples[i].label])
    batches, u = [], 0
    for j in range(nb):
        lo, hi = round(j * len(good) / nb), round((j + 1) * len(good) / nb)
        n_bad = global_batch - (hi - lo)
        batches.append(good[lo:hi] + bad[u : u + n_bad])
        u += n_bad
    return batches


def plan_batches(
    examples: list[Tokenized], global_batch: int, steps: int, seed: int, group_by_length: bool
) -> list[list[int]]:
    """``steps`` global micro-batches of ``global_batch`` example positions each.

    With ``group_by_length``, each epoch is shuffled, cut into chunks of 32 batches, each chunk
    cut into batches of similar length that still mix both classes, and the batch order and
    the rows inside each batch shuffled again: padding shrinks, batches stay random.
    """
    rng = random.Random(seed)
    plan: list[list[int]] = []
    while len(plan) < steps:
        order = list(range(len(examples)))
        rng.shuffle(order)
        usable = len(order) - len(order) % global_batch
        order = order[:usable]
        if group_by_length:
            chunk = global_batch * 32
            batches = []
            for s in range(0, len(order), chunk):
                batches += _mixed_length_batches(order[s : s + chunk], examples, global_batch)
            rng.shuffle(batches)
            for b in batches:
                rng.shuffle(b)
        else:
            batches = [order[j : j + global_batch] for j in range(0, len(order), global_batch)]
        plan += batches
    return plan[:steps]


def steps_per_epoch(n_examples: int, global_batch: int) -> int:
    return max(1, n_examples // global_batch)


def total_micro_steps(n_examples: int, global_batch: int, epochs: float, max_steps: int | None, grad_accum: int) -> int:
    if max_steps:
        return max_steps * grad_accum
    return max(grad_accum, math.ceil(steps_per_epoch(n_examples, global_batch) * epochs / grad_accum) * grad_accum)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    kl_input_ids: torch.Tensor
    kl_attention_mask: torch.Tensor
    kl_completion_mask: torch.Tensor
    labels: torch.Tensor  # bool
    index: torch.Tensor  # example positions (for cached reference log-probs)
    kl_index: torch.Tensor  # the example whose completion each row's KL sequence borrows
    tokens: int  # non-pad tokens in the target sequences

    def to(self, device: torch.device) -> "Batch":
        for k, v in vars(self).items():
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


def pad_pairs(seqs: list[tuple[list[int], list[int]]], pad_id: int, max_length: int) -> tuple[torch.Tensor, ...]:
    """Right-padded (input_ids, attention_mask, completion_mask) for (prompt ids, completion ids) pairs."""
    width = min(max_length, max(len(p) + len(c) for p, c in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        full = (p + c)[:width]
        ids[i, : len(full)] = torch.tensor(full)
        att[i, : len(full)] = 1
        comp[i, len(p) : len(full)] = 1
    return ids, att, comp


def collate(examples: list[Tokenized], global_rows: list[int], local: slice, pad_id: int, max_length: int) -> Batch:
    """Tensors for this process's slice of a global micro-batch, with its mismatched KL pairs."""
    n = len(global_rows)
    mine = list(range(n))[local]
    target = [(examples[global_rows[i]].prompt_ids, examples[global_rows[i]].completion_ids) for i in mine]
    kl = [(examples[global_rows[i]].prompt_ids, examples[global_rows[(i + 1) % n]].completion_ids) for i in mine]
    ids, att, comp = pad_pairs(target, pad_id, max_length)
    kids, katt, kcomp = pad_pairs(kl, pad_id, max_length)
    return Batch(
        ids,
        att,
        comp,
        kids,
        katt,
        kcomp,
        labels=torch.tensor([examples[global_rows[i]].label for i in mine], dtype=torch.bool),
        index=torch.tensor([global_rows[i] for i in mine], dtype=torch.long),
        kl_index=torch.tensor([global_rows[(i + 1) % n] for i in mine], dtype=torch.long),
        tokens=int(att.sum()),
    )
