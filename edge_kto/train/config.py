"""``TrainConfig``: every knob of ``edge-kto train``, one dataclass (a YAML file maps onto it 1:1)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_kto_runtime.errors import InvalidInput

from ..precision import PRECISIONS
from ..schema import KEY_OMITS_DEFAULT
from .loss import LOSS_TYPES

SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear" (peft's shorthand: every linear layer but the LM head) or a list of module names.
    targets: str | list[str] = "all-linear"


@dataclass
class TrainConfig:
    """KTO + LoRA on the student. Defaults suit a 100M-1B student on a few hundred to a few thousand rows."""

    data: str = ""  # KTO JSONL (unpaired / ms-swift / paired)
    model: str = "smollm2-135m-instruct"  # known name, HF folder, .gguf, or hub id
    out: str = "runs/kto"
    # The loss (arXiv 2402.01306).
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    loss_type: str = "kto"  # or "apo_zero_unpaired"
    # > 0: + nll_weight x NLL per token of the desirable rows (iterative RPO's anchor; 0 = the paper's KTO).
    nll_weight: float = field(default=0.0, metadata=KEY_OMITS_DEFAULT)
    # Optimisation. batch_size is the global micro-batch (all processes together).
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Sequences.
    max_length: int = 512
    max_prompt_length: int = 256
    group_by_length: bool = True
    # Compute.
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), else fp32 (edge_kto.precision)
    precision: str = "auto"
    gradient_checkpointing: bool = False
    precompute_ref: bool = True
    cache_dir: str | None = None  # reference log-prob cache; default $EDGE_KTO_CACHE/ref
    # Optional SFT warm start on the desirable rows (merged into the base before KTO, so the
    # KTO reference is the SFT model, as the paper's SFT-then-KTO recipe has it).
    sft_steps: int = 0
    sft_lr: float = 2e-4
    # Or reuse one: another run's ``sft_adapter/`` folder, merged instead of training a new warm start,
    # so several KTO settings start from the very same SFT model (benchmarks/distill_ablation.py).
    sft_from: str | None = None
    # Run folder.
    save_steps: int = 50
    keep_checkpoints: int = 2
    merge: bool = True  # write the merged model (needed by export)
    plot: bool = True

    def validate(self) -> None:
        """Refuse settings that cannot work, before anything is loaded."""
        errs = []
        if not self.data:
            errs.append("data: a KTO JSONL file is required")
        if self.loss_type not in LOSS_TYPES:
            errs.append(f"loss_type: must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.schedule not in SCHEDULES:
            errs.append(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.batch_size < 2:
            errs.append(
                "batch_size: KTO's KL estimate pairs each row with another row of the batch; use >= 2 (8+ recommended)"
            )
        for name in ("grad_accum", "max_length", "max_prompt_length", "save_steps", "lora.r"):
            obj, attr = (self.lora, "r") if name == "lora.r" else (self, name)
            if getattr(obj, attr) < 1:
                errs.append(f"{name}: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            errs.append("max_steps: must be >= 1 when given")
        if self.epochs <= 0 and not self.max_steps:
            errs.append("epochs: must be > 0")
        for name in ("lr", "sft_lr", "beta"):  # also NaN and inf: a torch traceback after the model loads otherwise
            if not 0 < getattr(self, name) < math.inf:
                errs.append(f"{name}: must be a finite number > 0, got {getattr(self, name)!r}")
        if self.nll_weight < 0:
            errs.append("nll_weight: must be >= 0")
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            errs.append("desirable_weight/undesirable_weight: must be > 0")
        if self.sft_from and not (Path(self.sft_from) / "adapter_config.json").is_file():
            errs.append(f"sft_from: {self.sft_from} holds no adapter_config.json (expected a run's sft_adapter/)")
        if self.precision not in PRECISIONS:
            errs.append(f"precision: one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if errs:
            raise InvalidInput("invalid training config:\n  " + "\n  ".join(errs))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        """Every key and value type checked (``where: key: message``), then :meth:`validate`."""
        from ..schema import from_mapping

        return from_mapping(cls, d, where)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        import yaml

        d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(d, dict):
            raise InvalidInput(f"{path}: expected a mapping of training options")
        d = d.get("train", d)
        d.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(d, where=str(path))
