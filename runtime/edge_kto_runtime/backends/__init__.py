"""Inference backends behind one small interface (``Backend``): llama.cpp and onnxruntime-genai.

Each backend takes token ids in and gives token ids (or logits) out; chat templates, stop
strings, UTF-8 streaming and scoring live above them in :mod:`edge_kto_runtime.model`, so both
backends behave identically there.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class BackendMissing(ImportError):
    pass


class Backend(Protocol):
    name: str
    n_ctx: int
    n_vocab: int

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """No BOS added. ``special=False``: control-token text (``<|im_start|>``) stays plain text."""

    def detokenize(self, ids: list[int]) -> bytes: ...

    def generate_ids(self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                     seed: int | None) -> Iterator[int]: ...

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def physical_cores() -> int:
    """Physical cores (not hyper-threads): decode is memory-bound and SMT siblings slow it down."""
    import os

    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
        if core is not None:
            pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1
