"""Fake quantizers that are bit-identical to the formats we ship.

``q4_0`` mirrors llama.cpp's ``quantize_row_q4_0_ref`` (ggml-quants.c), block 32 along the
input dimension::

    m  = the signed element with the largest |w| (the first one on a tie)
    d  = m / -8            (fp32)        id = 1/d (0 when d == 0)
    q  = min(15, trunc(w * id + 8.5))    stored scale = fp16(d)
    w^ = (q - 8) * fp16(d)

The arithmetic matters: multiplying by the fp32 reciprocal (not dividing by d), truncating
``x*id + 8.5`` and rounding the stored scale to fp16 are each needed for a 0-difference match
(research/quantization-verified.md). A tensor already on this grid is a fixed point of both
llama.cpp Q4_0 (``pure``, no importance matrix) and onnxruntime's default symmetric int4
(MatMulNBits, block 32: scale = signed absmax / -8 kept in fp32, ``roundf(x/s + 8)``), so one
finished checkpoint exports exactly to both runtimes.

``FakeQuantLinear`` applies it in the forward pass with a straight-through estimator, which is
what quantization-aware finishing trains against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK = 32
FORMATS = ("q4_0",)  # the grids a model can be finished against (GGUF Q4_0 == ONNX int4 b32 symmetric)
ACTIVATIONS = ("fp", "q8_0")  # q8_0: as llama.cpp's CPU kernels (and onnxruntime at accuracy_level 4) see inputs


def q4_0_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes in [-8, 7], fp16-rounded scales as fp32) of ``w`` [rows, cols], blocks of 32 along cols."""
    if w.dim() != 2 or w.shape[1] % BLOCK:
        raise ValueError(f"Q4_0 needs a 2-D weight whose row width is a multiple of {BLOCK}, got {tuple(w.shape)}")
    blocks = w.detach().float().reshape(w.shape[0], -1, BLOCK)
    m = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))  # torch.argmax: first maximum, as llama.cpp
    d = m / -8.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.clamp(torch.trunc(blocks * inv + 8.5), max=15.0) - 8.0
    return q, d.half().float()


def q4_0_dequantized(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded onto the Q4_0 grid (same shape, fp32): what llama.cpp will compute with.

    :func:`q4_0_codes` then ``q * d``, bit for bit, computed faster: finishing calls this on every
    weight at every step (SmolLM2-135M: 0.49 s of a 3 s step with q4_0_codes' ops)."""
    if w.dim() != 2 or w.shape[1] % BLOCK:
        return (lambda q, d: (q * d).reshape(w.shape))(*q4_0_codes(w))  # q4_0_codes names the error
    blocks = w.detach().float().reshape(w.shape[0], -1, BLOCK)
    # the value of largest magnitude from amax/amin (argmax over 32-wide rows is slow on CPU); where
    # +x and -x both reach it, llama.cpp's first one, by argmax on those blocks only
    hi, lo = blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True)
    m = torch.where(hi >= -lo, hi, lo)
    tie = (hi == -lo) & (hi != 0)
    if tie.any():
        m = torch.where(tie, blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)), m)
    d = m / -8.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, torch.ones_like(d)), torch.zeros_like(d))
    t = blocks * inv
    # t + 8.5 lies in [0.5, 16.5]: floor is trunc there (and 3x faster)
    t.add_(8.5).floor_().clamp_(max=15.0).sub_(8.0).mul_(d.half().float())
    return t.reshape(w.shape)


def fake_quantize(w: torch.Tensor, fmt: str = "q4_0") -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (d w^/d w = 1)."""
    if fmt != "q4_0":
        raise ValueError(f"unknown fake-quant format {fmt!r}; known: {list(FORMATS)}")
    delta = q4_0_dequantized(w).to(w.dtype).sub_(w.detach())  # w_hat - w, in the fresh w_hat's buffer
    return w + delta


def q8_0_activations(x: torch.Tensor) -> torch.Tensor:
    """Linear inputs as llama.cpp's CPU matmuls see them: blocks of 32, d = amax/127 (fp16), round;
    straight-through. (Rounding ties to even here, away from zero in llama.cpp's scalar path.)"""
    if x.shape[-1] % BLOCK:
        return x
    b = x.reshape(*x.shape[:-1], -1, BLOCK)
    d = b.detach().abs().amax(-1, keepdim=True) / 127.0
    safe = torch.where(d > 0, d, torch.ones_like(d))
    x_hat = (torch.round(b.detach() / safe) * d.half().to(x.dtype)).reshape(x.shape)
    return x + (x_hat - x).detach()


def on_grid(w: torch.Tensor, fmt: str = "q4_0") -> bool:
    """True when ``w`` is already a fixed point of the quantizer (what a finished model stores)."""
    return bool(torch.equal(q4_0_dequantized(w), w.detach().float()))


class FakeQuantLinear(nn.Module):
    """A Linear whose forward sees its weight on the shipped grid; gradients pass straight through."""

    def __init__(self, linear: nn.Linear, fmt: str = "q4_0", activations: str = "fp"):
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.fmt, self.activations = fmt, activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "q8_0":
            x = q8_0_activations(x)
        return F.linear(x, fake_quantize(self.weight, self.fmt), self.bias)


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The decoder's Linear layers that the 4-bit exports quantize (everything but the LM head)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and m.in_features % BLOCK == 0
    }


# The projections onnxruntime-genai's builder keeps at int8 with ``matmul_mixed_precision=mixed_layers:int8``
# (llama.cpp's "use more bits" layers): q/k/v (its fused qkv_proj) and down_proj of the layers below.
MIXED_8BIT_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")
MIXED_8BIT_GGUF = ("attn_q", "attn_k", "attn_v", "ffn_down")


def mixed_8bit_layers(n_layers: int) -> list[int]:
    """The sensitive layers, exactly as onnxruntime-genai's builder picks them (float division):
    the first and last eighth, and every third layer in between."""
    return [
        i for i in range(n_layers) if i < n_layers / 8 or i >= 7 * n_layers / 8 or (i - round(n_layers / 8)) % 3 == 2
    ]


def mixed_8bit_names(model: nn.Module) -> list[str]:
    """Names of the Linears that ship at 8-bit in a mixed export (not fake-quantized to 4-bit)."""
    layers = mixed_8bit_layers(model.config.num_hidden_layers)
    return [
        n
        for n in quantizable_linears(model)
        if any(n.endswith(f"layers.{i}.{m}") for i in layers for m in MIXED_8BIT_MODULES)
    ]


def mixed_8bit_gguf_pattern(layers: list[int]) -> str:
    """A llama.cpp ``--tensor-type`` regex naming the same tensors in a GGUF."""
    return rf"blk\.({'|'.join(map(str, layers))})\.({'|'.join(MIXED_8BIT_GGUF)})\."


def wrap_linears(model: nn.Module, fmt: str = "q4_0", activations: str = "fp", skip: tuple[str, ...] = ()) -> list[str]:
    """Replace every quantizable Linear (but those in ``skip``) by a :class:`FakeQuantLinear` sharing its parameters."""
    names = [n for n in quantizable_linears(model) if n not in skip]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, FakeQuantLinear(getattr(parent, child), fmt, activations))
    return names


def unwrap_linears(model: nn.Module) -> None:
    """Back to plain Linears, each weight snapped onto the grid (the model to save and export)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, FakeQuantLinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            lin = nn.Linear(mod.weight.shape[1], mod.weight.shape[0], bias=mod.bias is not None)
            with torch.no_grad():
                lin.weight = nn.Parameter(q4_0_dequantized(mod.weight).to(mod.weight.dtype))
                if mod.bias is not None:
                    lin.bias = mod.bias
            setattr(parent, child, lin)
