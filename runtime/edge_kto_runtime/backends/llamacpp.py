"""The llama.cpp runtime backend: :class:`~edge_kto_runtime.llama_engine.LlamaEngine` under the
:class:`~edge_kto_runtime.backends.Backend` interface, plus the persisted prefix state (the
registry declares ``prefix_cache`` for it)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_atomic
from ..llama_engine import LlamaEngine

#: sequences decoded together by :meth:`LlamaCppBackend.greedy_many` (the demo's Q4_0 student, 200
#: golden prompts, 2 cores: 20 s at 16 against 46 s one at a time, the same answers)
GREEDY_PARALLEL = 16


class LlamaCppBackend(LlamaEngine):
    name = "llama.cpp"

    def greedy_many(self, prompts: list[list[int]], max_new_tokens: int, end_ids: set[int]) -> list[list[int]]:
        """Greedy answers to many prompts, decoded together (:class:`BatchedDecoder`); each ends with
        the first of ``end_ids`` it produces (kept) or after ``max_new_tokens``: what a one-at-a-time
        loop over :meth:`generate_ids` returns (``tests/test_llama_batched.py``)."""
        from ..llama_batched import BatchedDecoder, DecodeRequest, shared_prefix

        out: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens < 1:
            return out
        n_ctx_seq = max(len(p) for p in prompts) + max_new_tokens
        with BatchedDecoder(self, min(GREEDY_PARALLEL, len(prompts)), n_ctx_seq) as dec:
            reqs = [DecodeRequest(p) for p in prompts]
            for i, ids in dec.run(reqs, max_new_tokens, 0.0, prefix=shared_prefix(prompts), end_ids=end_ids):
                out[i] = ids
        return out

    def save_prefix(self, ids: list[int], path: Path, key: str) -> None:
        """Evaluate ``ids`` and persist the KV state, so a restart skips the shared system prompt."""
        write_atomic(path, self.save_state(ids, key))

    def load_prefix(self, path: Path, key: str) -> int:
        """Restore a persisted KV state written for ``key``; returns how many prompt tokens it covers."""
        return self.load_state(path, key)
