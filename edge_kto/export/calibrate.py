"""The importance matrix an export quantizes with: computed from the task's training rows, or read
from a file (ours or ``llama-imatrix``'s). Never from the eval split: the gate measures on it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_kto_runtime.bundle import file_entry

from ..quant.imatrix import Imatrix, ImatrixError, compute_imatrix, read_imatrix, write_imatrix

log = logging.getLogger(__name__)


def calibration_sequences(tok: Any, data: str, limit: int) -> list[list[int]]:
    """Chat-rendered token ids: prompt + answer for desirable KTO rows; the prompt alone for a task
    folder's training split or a prompt file (the activations that produce the task's answers)."""
    from ..data import read_kto, read_prompts, read_task, to_messages
    from ..train.tokenize import TokenizeReport, tokenize_example
    from .golden import chat_ids, looks_like_kto

    p = Path(data)
    if p.is_dir():
        task = read_task(p)
        return [chat_ids(tok, to_messages(it.prompt, task.system)) for it in task.train[:limit]]
    if looks_like_kto(p):
        rep, seqs = TokenizeReport(), []
        for i, ex in enumerate(read_kto(p)):
            if ex.label:
                t = tokenize_example(tok, ex, i, 1024, 1023, rep)
                if t is not None:
                    seqs.append(t.prompt_ids + t.completion_ids)
            if len(seqs) >= limit:
                break
        return seqs
    return [chat_ids(tok, to_messages(it.prompt)) for it in read_prompts(p)[:limit]]


def importance_matrix(cfg: Any, source: Any, tok: Any, out: Path, progress: bool) -> tuple[dict[str, Any], Imatrix]:
    """(manifest record, matrix) for ``cfg.imatrix``: "auto" computes and saves ``OUT.imatrix.gguf``."""
    if cfg.imatrix != "auto":
        im = read_imatrix(cfg.imatrix)
        return {
            "source": str(cfg.imatrix),
            **file_entry(Path(cfg.imatrix)),
            "tokens": im.tokens,
            "datasets": im.datasets,
        }, im
    data = cfg.calibration_data or source.default_data
    if not data:
        raise ImatrixError(
            "imatrix: auto needs calibration_data (the training rows or a task folder); this source names none"
        )
    import torch
    from transformers import AutoModelForCausalLM

    seqs = calibration_sequences(tok, data, cfg.calibration_limit)
    if not seqs:
        raise ImatrixError(
            f"{data}: no calibration rows (desirable KTO rows or prompts) to compute an importance matrix"
        )
    model = AutoModelForCausalLM.from_pretrained(str(source.hf_dir), dtype=torch.float32)
    im = compute_imatrix(model, seqs, progress, dataset=str(data))
    path = write_imatrix(im, out.with_name(out.name + ".imatrix.gguf"))
    log.info("importance matrix: %d sequences, %d tokens -> %s", len(seqs), im.tokens, path)
    return {
        "source": "auto",
        "path": str(path),
        **file_entry(path),
        "tokens": im.tokens,
        "sequences": len(seqs),
        "data": str(data),
    }, im
