"""The llama.cpp runtime backend: :class:`~edge_kto_runtime.llama_engine.LlamaEngine` under the
:class:`~edge_kto_runtime.backends.Backend` interface, plus the persisted prefix state (the
registry declares ``prefix_cache`` for it)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_atomic
from ..llama_engine import LlamaEngine


class LlamaCppBackend(LlamaEngine):
    name = "llama.cpp"

    def save_prefix(self, ids: list[int], path: Path, key: str) -> None:
        """Evaluate ``ids`` and persist the KV state, so a restart skips the shared system prompt."""
        write_atomic(path, self.save_state(ids, key))

    def load_prefix(self, path: Path, key: str) -> int:
        """Restore a persisted KV state written for ``key``; returns how many prompt tokens it covers."""
        return self.load_state(path, key)
