"""Tiny random Llama models that reuse a real tokenizer, for tests and benchmarks.

A real tokenizer matters: llama.cpp's converter rejects BPE tokenizers whose pre-tokenizer
it does not know, so a tiny model with SmolLM2's tokenizer converts to GGUF like the real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_tiny_llama(
    out_dir: str | Path,
    tokenizer: Any,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    seed: int = 0,
    tie_word_embeddings: bool = True,
) -> Path:
    """Write a randomly initialised LlamaForCausalLM with ``tokenizer`` to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
