"""llama.cpp through llama-cpp-python: the high-level ``Llama`` for loading and sampling, its
low-level batch API for scoring (logits only at the positions asked for, never a
context x vocab matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from . import BackendMissing
from ..errors import InvalidInput

try:
    import llama_cpp
except ImportError as e:  # pragma: no cover - exercised in the runtime-only CI venv
    raise BackendMissing("the llama.cpp backend needs llama-cpp-python: pip install 'edge-kto-runtime[llamacpp]'") from e


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, n_threads: int, use_mmap: bool = True, seed: int = 0):
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   use_mmap=use_mmap, seed=seed, verbose=False)
        # llama.cpp may round the context up (e.g. to 256); llama-cpp-python's token buffer keeps the
        # requested size, so the smaller of the two is what fits.
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self.n_vocab = self.llm.n_vocab()

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """``special``: control-token text (the chat template's markers) is parsed; no BOS is added."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.llm.detokenize(ids, special=False)

    def generate_ids(self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float = 1.0, top_k: int = 0,
                     seed: int | None = None) -> Iterator[int]:
        """Sampled (or greedy at temperature 0) ids.

        The KV cache of a prompt prefix shared with the previous call is kept (a cached system
        prompt costs nothing), and the rest of the prompt is evaluated in one batch. A prompt the
        cache already covers entirely (a repeated request) is recomputed from scratch: the logits
        of its last token would otherwise come from a one-token decode, which rounds differently
        from the batched one, and a repeated greedy request must repeat its output.
        """
        llm = self.llm
        if seed is not None:
            llm.set_seed(seed)
        cached = 0
        for a, b in zip(llm._input_ids[:llm.n_tokens], ids):
            if a != b:
                break
            cached += 1
        if cached >= len(ids) - 1:
            cached = 0
        llm.n_tokens = cached
        llm._ctx.kv_cache_seq_rm(-1, cached, -1)
        llm.eval(ids[cached:])
        if temperature <= 0:  # greedy: argmax over the logits, no sampler chain (the bare loop's cost)
            for i in range(max_new_tokens):
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
                tok = int(logits.argmax())
                yield tok
                if i + 1 == max_new_tokens or llm.n_tokens + 1 >= self.n_ctx:
                    break  # no decode of the last token: nothing reads its logits
                llm.eval([tok])
            return
        gen = llm.generate([], temp=temperature, top_p=top_p, top_k=top_k, min_p=0.0, repeat_penalty=1.0, reset=False)
        for n, tok in enumerate(gen):
            if n >= max_new_tokens:
                break
            yield tok
            if llm.n_tokens >= self.n_ctx:
                break

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Raw logits predicting the token after each position in ``positions`` (0-based into ``ids``)."""
        llm, want = self.llm, sorted(set(positions))
        flagged = set(want)
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        rows: dict[int, np.ndarray] = {}
        nb = llm.n_batch
        for start in range(0, len(ids), nb):
            chunk = ids[start:start + nb]
            llm._batch.set_batch(chunk, n_past=start, logits_all=False)
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = (start + j) in flagged
            llm._ctx.decode(llm._batch)
            for j in range(len(chunk)):
                if start + j in flagged:
                    rows[start + j] = np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(self.n_vocab,)).copy()
        llm.n_tokens = 0  # the KV now holds a scoring pass; the next generate re-evaluates its prompt
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        return np.stack([rows[p] for p in positions])

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is evaluated from scratch)."""
        self.llm.n_tokens = 0
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    def save_prefix(self, ids: list[int], path: Path, key: str) -> None:
        """Evaluate ``ids`` and persist the KV state, so a restart skips the shared system prompt.

        Stored as a plain ``.npz`` (never a pickle: loading one runs code) with ``key``, which names
        the model file and prompt it belongs to; :meth:`load_prefix` refuses any other key.
        """
        import io

        self.reset()
        self.llm.eval(ids)
        st = self.llm.save_state()
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), input_ids=st.input_ids, scores=st.scores, n_tokens=np.array(st.n_tokens),
                 seed=np.array(st.seed), llama_state=np.frombuffer(st.llama_state, dtype=np.uint8))
        from ..atomic import write_atomic

        write_atomic(path, buf.getvalue())

    def load_prefix(self, path: Path, key: str) -> int:
        """Restore a persisted KV state written for ``key``; returns how many prompt tokens it covers."""
        try:
            z = np.load(path, allow_pickle=False)
            saved = str(z["key"])
        except (OSError, ValueError, KeyError) as e:
            raise InvalidInput(f"{path}: not a prefix state file ({e})") from None
        if saved != key:
            raise InvalidInput(f"{path}: a prefix state for another model or prompt; refused")
        state = z["llama_state"].tobytes()
        self.llm.load_state(llama_cpp.LlamaState(z["input_ids"], z["scores"], int(z["n_tokens"]), state, len(state),
                                                 int(z["seed"])))
        return self.llm.n_tokens

    def close(self) -> None:
        self.llm.close()
