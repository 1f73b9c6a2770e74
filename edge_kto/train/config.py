"""TrainConfig: every knob of ``edge-kto train`` (a pipeline YAML's ``train:`` maps onto it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainConfig:
    data: str  # KTO JSONL (any accepted format)
    model: str  # student spec: HF folder, .gguf, known name, hub id
    out: str = "run"
    # KTO
    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    loss_type: str = "kto"  # or "apo_zero_unpaired"
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # optimisation
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    seed: int = 0
    # sequences
    max_length: int = 512
    max_prompt_length: int = 256
    group_by_length: bool = True
    # compute
    precompute_ref: bool = True  # reference log-probs computed once, cached on disk
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # auto: fp32 on CPU, bf16 on GPU
    # SFT warm start on desirable rows (merged into the base before KTO, so it is also the reference)
    sft_steps: int = 0
    sft_lr: float = 1e-4
    # bookkeeping
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 1
    merge: bool = True  # write the merged model (what export needs)
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)
