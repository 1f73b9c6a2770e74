"""A toy runtime backend for tests/test_backend_registry.py: bytes as tokens, a fixed answer.

It exists to prove the extension point: a backend is this one file plus one registry line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

ANSWER = "toy backend says hi"


class ToyBackend:
    name = "toy"
    n_vocab = 256

    def __init__(self, path: Path, n_ctx: int, n_threads: int):
        self.path, self.n_ctx = Path(path), n_ctx
        assert self.path.read_bytes().startswith(b"TOY"), "opened with the artifact the manifest lists"

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def detokenize(self, ids: list[int]) -> bytes:
        return bytes(ids)

    def generate_ids(
        self,
        ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Iterator[int]:
        yield from list(ANSWER.encode())[:max_new_tokens]

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray:
        out = np.zeros((len(positions), self.n_vocab), dtype=np.float32)
        for row, p in enumerate(positions):
            out[row, ids[p + 1] if p + 1 < len(ids) else 0] = 5.0
        return out

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass
