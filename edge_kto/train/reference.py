"""Reference log-probs, computed once before training and cached on disk.

The reference model is the student with its LoRA adapter disabled (no second copy in memory).
Its log-probs never change during training, so we compute them for every target sequence and
every mismatched KL pair the batch plan will use, once, in length-sorted batches with no
padding waste. Each process computes a shard; the shards are gathered so every process holds
the full table. The table is cached by a hash of the base weights, the token ids and the
pairs: a rerun or a resumed run skips the pass.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from ..jsonl import write_atomic
from .tokenize import Tokenized

log = logging.getLogger(__name__)

Seq = tuple[int, int]  # (example whose prompt, example whose completion); (i, i) is a target sequence


def default_cache_dir() -> Path:
    """The reference log-prob cache: ``ref/`` under the one cache root (``models.cache_root``)."""
    from ..models.fetch import cache_root

    return cache_root() / "ref"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (about 1 s per GB on CPU)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # a view, not a copy of the weights
    return h.hexdigest()


def needed_sequences(plan: list[list[int]], examples: list[Tokenized], with_kl: bool) -> list[Seq]:
    """Every distinct sequence the plan scores: targets, and (prompt i, completion of row i+1) pairs."""
    seqs: set[Seq] = set()
    for rows in plan:
        n = len(rows)
        for j, g in enumerate(rows):
            seqs.add((g, g))
            if with_kl:
                seqs.add((g, rows[(j + 1) % n]))
    return sorted(seqs, key=lambda s: (len(examples[s[0]].prompt_ids) + len(examples[s[1]].completion_ids), s))


def cache_key(fingerprint: str, examples: list[Tokenized], seqs: list[Seq], precision: str) -> str:
    h = hashlib.sha256(f"{fingerprint}|{precision}".encode())
    for e in examples:
        h.update(repr((e.prompt_ids, e.completion_ids)).encode())
    h.update(repr(seqs).encode())
    return h.hexdigest()[:32]


class ReferenceTable:
    """Summed completion log-probs of the reference for (prompt example, completion example) pairs."""

    def __init__(self, values: dict[Seq, float]):
        self.values = values

    def lookup(self, prompts: list[int], completions: list[int], device: torch.device) -> torch.Tensor:
        return torch.tensor(
            [self.values[(p, c)] for p, c in zip(prompts, completions)], dtype=torch.float32, device=device
        )

    def save(self, path: Path) -> None:
        keys = torch.tensor(list(self.values.keys()), dtype=torch.long).reshape(-1, 2)
        vals = torch.tensor(list(self.values.values()), dtype=torch.float64)
        import io

        buf = io.BytesIO()
        torch.save({"keys": keys, "values": vals}, buf)
        write_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "ReferenceTable":
        d = torch.load(path, weights_only=True)
        return cls({(int(a), int(b)): float(v) for (a, b), v in zip(d["keys"].tolist(), d["values"].tolist())})


def _length_batches(seqs: list[Seq], examples: list[Tokenized], max_tokens: int) -> list[list[Seq]]:
    """Consecutive runs of the length-sorted list, each padded size <= max_tokens."""
    out: list[list[Seq]] = []
    cur: list[Seq] = []
    for s in seqs:
        width = len(examples[s[0]].prompt_ids) + len(examples[s[1]].completion_ids)
        if cur and width * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(s)
    if cur:
        out.append(cur)
    return out


def compute_reference(
    score: Callable[[list[Seq]], torch.Tensor],
    seqs: list[Seq],
    examples: list[Tokenized],
    accelerator: Any,
    max_tokens: int = 4096,
    progress: bool = True,
) -> ReferenceTable:
    """Score this process's shard of ``seqs`` with ``score`` (reference forward) and gather all shards."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    mine = seqs[accelerator.process_index :: accelerator.num_processes]
    batches = _length_batches(mine, examples, max_tokens)
    local: list[tuple[Seq, float]] = []
    bar = tqdm(
        batches, desc="reference log-probs", unit="batch", disable=not (progress and accelerator.is_main_process)
    )
    for b in bar:
        local += list(zip(b, score(b).double().tolist()))
    gathered = gather_object(local) if accelerator.num_processes > 1 else local
    return ReferenceTable({tuple(s): v for s, v in gathered})  # type: ignore[misc]


def cached_reference(
    key: str,
    cache_dir: Path,
    build: Callable[[], ReferenceTable],
    accelerator: Any,
) -> tuple[ReferenceTable, bool]:
    """(table, was_cached). The main process writes the cache atomically."""
    path = cache_dir / f"{key}.pt"
    accelerator.wait_for_everyone()  # every process looks before any process can write
    exists = path.is_file()
    accelerator.wait_for_everyone()
    if exists:
        try:
            return ReferenceTable.load(path), True
        except Exception as e:  # a corrupt cache file is rebuilt, never trusted
            log.warning("%s: unreadable reference cache (%s); recomputing", path, e)
    table = build()
    if accelerator.is_main_process:
        cache_dir.mkdir(parents=True, exist_ok=True)
        table.save(path)
    accelerator.wait_for_everyone()
    return table, False
