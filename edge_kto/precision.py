"""Which arithmetic training runs in: one rule for ``train``, ``rounds`` and ``finish``.

Why: bf16 autocast is the usual choice on a GPU, and on a CPU it pays off only where the CPU
multiplies bf16 natively (AVX512-BF16, AMX). On the 2-core AMD EPYC (Zen 5) the demo is measured
on, a 640 x 576 x 1536 matmul runs 4.2x faster in bf16 and one LoRA forward + backward of
SmolLM2-135M 2.2-2.5x faster; a CPU without those instructions has no bf16 dot product in
hardware (not measured here), so ``auto`` picks bf16 on CUDA and on CPUs with it, fp32 elsewhere.
The pipeline resolves ``auto`` before it hashes a stage's settings, so a stage's key says which ran.

Attention for training on a CPU is the eager path: torch's CPU flash-attention kernel took 30% of
a bf16 LoRA step of SmolLM2-135M on 8 x 140 tokens (its backward alone 23%); eager attention
(two matmuls and a softmax, upcast to fp32) made the step 1.35 s instead of 1.76 s (8 x 300 tokens:
3.17 s instead of 3.51 s). On CUDA the model keeps its own choice (SDPA / flash).
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import Any, ContextManager

from edge_kto_runtime.errors import InvalidInput

PRECISIONS = ("auto", "fp32", "bf16")
# /proc/cpuinfo flags of CPUs whose matmul units take bf16 (oneDNN's fast bf16 paths)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 dot products in hardware (Linux flags; elsewhere False)."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` on CUDA or a CPU with native bf16, else ``fp32``; the others as given."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision: one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    import torch

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device_type: str = "cpu") -> ContextManager:
    """bf16 autocast for ``bf16`` (after :func:`resolve_precision`), a no-op context otherwise."""
    import torch

    if resolve_precision(precision) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def use_training_attention(model: Any) -> Any:
    """``model`` with the attention kernel training is fastest with on its device (eager on a CPU).

    Only the loaded module changes: ``save_pretrained`` does not record it, so the saved model
    loads with transformers' default again."""
    if next(model.parameters()).device.type == "cpu" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    return model
