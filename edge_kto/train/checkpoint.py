"""Checkpoints that resume exactly: adapter weights, optimizer, scheduler, every process's RNG
state and the step (the data position follows from the step: the batch plan is a pure function
of the data and the seed).

A checkpoint is written into a temporary folder and renamed when complete, so a kill -9 during
a save leaves the previous checkpoint intact; ``state.json`` is written last and marks it
complete. Only the trainable (LoRA) parameters are saved: megabytes, not the whole model.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_kto_runtime.errors import InvalidInput

from ..jsonl import write_json_atomic

PREFIX = "step-"


@dataclass
class Checkpoint:
    path: Path
    step: int


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(ckpt_dir: Path) -> Checkpoint | None:
    found = []
    for p in ckpt_dir.glob(f"{PREFIX}*"):
        if (p / "state.json").is_file() and p.name[len(PREFIX) :].isdigit():
            found.append(Checkpoint(p, int(p.name[len(PREFIX) :])))
    return max(found, key=lambda c: c.step) if found else None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    accelerator: Any,
    extra: dict[str, Any],
    keep: int,
) -> Path:
    """Collective: every process calls it (each writes its own RNG state)."""
    final = ckpt_dir / f"{PREFIX}{step:07d}"
    tmp = ckpt_dir / f".tmp-{PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(trainable_state(model), tmp / "adapter.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "state.json", {"step": step, "world_size": accelerator.num_processes, **extra})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        old = sorted(ckpt_dir.glob(f"{PREFIX}*"))[:-keep] if keep > 0 else []
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any, accelerator: Any) -> dict:
    import json

    state = json.loads((ckpt.path / "state.json").read_text())
    if state.get("world_size") != accelerator.num_processes:
        raise InvalidInput(
            f"{ckpt.path}: saved with {state.get('world_size')} processes, resuming with "
            f"{accelerator.num_processes}; resume with the same number of processes"
        )
    weights = torch.load(ckpt.path / "adapter.pt", weights_only=True)
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise InvalidInput(
            f"{ckpt.path}: adapter does not fit this model (e.g. {missing[0]}); was the LoRA config changed?"
        )
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].device))
    optimizer.load_state_dict(torch.load(ckpt.path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt.path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(ckpt.path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return state
