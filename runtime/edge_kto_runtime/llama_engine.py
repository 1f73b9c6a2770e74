"""``LlamaEngine``: the one owner of a llama.cpp model, and the only module that touches
llama-cpp-python's private attributes.

Why one engine: the GGUF teacher, the runtime backend and the pipeline's teacher-latency stage
each used to drive ``llama_cpp.Llama`` their own way (two thread policies, two BOS rules, private
attributes reached from three files). Here they share one loading rule (threads: physical cores),
one BOS rule (:meth:`prompt_ids`) and one decode loop.

The private surface is listed in ``PRIVATE_API`` and checked when a model loads, so a
llama-cpp-python release that renames one fails at load with the attribute and version named,
not mid-generation; ``tests/test_llama_engine.py`` pins the behaviour each one is used for.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .backends import BackendMissing
from .errors import InvalidInput, MissingDependency

try:
    import llama_cpp
except ImportError as e:  # pragma: no cover - exercised in the runtime-only CI venv
    raise BackendMissing("llama.cpp needs llama-cpp-python: pip install 'edge-kto-runtime[llamacpp]'") from e

#: (object, attribute) pairs of llama-cpp-python's private API this module relies on, and why.
PRIVATE_API: dict[tuple[str, str], str] = {
    ("Llama", "_input_ids"): "the ids whose KV is cached: a shared prompt prefix is kept",
    ("Llama", "_ctx"): "the context: KV removal, batched decode, logits of one position",
    ("Llama", "_batch"): "the batch: logits only at the positions scoring asks for",
    ("Llama", "_model"): "the vocab: BOS/EOS text and whether the model adds BOS",
    ("_ctx", "kv_cache_seq_rm"): "drop the KV after the kept prefix",
    ("_ctx", "get_logits_ith"): "greedy decode without the sampler chain; scoring rows",
    ("_ctx", "decode"): "batched scoring pass",
    ("_batch", "set_batch"): "fill a scoring batch",
    ("_batch", "batch"): "per-position logits flags",
    ("_model", "token_get_text"): "BOS/EOS token text for chat templates",
    ("_model", "add_bos_token"): "the BOS rule",
    ("_model", "model"): "the llama_model pointer a BatchedDecoder builds its own context on",
}


def check_private_api(llm: Any) -> None:
    """Refuse, by name, a llama-cpp-python whose private attributes moved."""
    objs = {"Llama": llm}
    for (owner, attr), why in PRIVATE_API.items():
        obj = objs.get(owner) if owner == "Llama" else getattr(llm, owner, None)
        if obj is None or not hasattr(obj, attr):
            raise MissingDependency(
                f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} has no {owner}.{attr} ({why}); "
                "edge-kto supports llama-cpp-python >=0.3.36,<0.4"
            )


def default_n_threads() -> int:
    from .defaults import default_threads

    return default_threads()


class LlamaEngine:
    """One loaded GGUF. Token ids in, token ids / logits / text out; no chat templates here."""

    def __init__(
        self, path: str | Path, n_ctx: int, n_threads: int | None = None, use_mmap: bool = True, seed: int = 0
    ):
        n_threads = n_threads or default_n_threads()
        # a pinned artifact arrives as /proc/self/fd/N: messages name the file it is
        self.path, self.n_threads = Path(os.path.realpath(path)), n_threads
        try:
            self.llm = llama_cpp.Llama(
                str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                use_mmap=use_mmap,
                seed=seed,
                verbose=False,
            )
        except ValueError:  # llama-cpp-python says so for a file llama.cpp cannot read as a model
            raise InvalidInput(f"{self.path}: llama.cpp cannot load this GGUF") from None
        try:
            check_private_api(self.llm)
        except MissingDependency:
            self.close()  # never leave a loaded model to interpreter shutdown (0.3.36 raises in free_model)
            raise
        # llama.cpp may round the context up (e.g. to 256); llama-cpp-python's token buffer keeps the
        # requested size, so the smaller of the two is what fits.
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))
        self.n_vocab = self.llm.n_vocab()

    # ------------------------------------------------------------ model facts

    @property
    def metadata(self) -> dict[str, str]:
        return self.llm.metadata

    @property
    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template")

    def special_text(self) -> tuple[str, str]:
        """The BOS and EOS tokens as text ("" when the model has none): what chat templates print."""
        vocab = self.llm._model
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        return (vocab.token_get_text(bos) if bos >= 0 else "", vocab.token_get_text(eos) if eos >= 0 else "")

    # ------------------------------------------------------------ text <-> ids

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        """``special``: control-token text (a template's markers) is parsed. No BOS unless asked."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def prompt_ids(self, rendered: str) -> list[int]:
        """A rendered chat prompt -> ids. The one BOS rule: add BOS when the model wants one and the
        template did not already print it."""
        bos, _ = self.special_text()
        add = bool(self.llm._model.add_bos_token()) and not (bos and rendered.startswith(bos))
        return self.tokenize(rendered, special=True, add_bos=add)

    def detokenize(self, ids: list[int]) -> bytes:
        return self.llm.detokenize(ids, special=False)

    def text(self, ids: list[int], prompt: list[int]) -> str:
        """An answer's text as ``create_completion`` returns it (detokenized after its prompt)."""
        return self.llm.detokenize(ids, prev_tokens=prompt).decode("utf-8", errors="ignore")

    @property
    def model_ptr(self) -> object:
        """The loaded ``llama_model`` (owned here: free it only through :meth:`close`)."""
        return self.llm._model.model

    # ------------------------------------------------------------ decoding

    def _keep_prefix(self, ids: list[int]) -> None:
        """Keep the KV of the prefix shared with the previous call and evaluate the rest in one batch.

        A prompt the cache already covers entirely (a repeated request) is recomputed from scratch:
        the logits of its last token would otherwise come from a one-token decode, which rounds
        differently from the batched one, and a repeated greedy request must repeat its output.
        """
        llm = self.llm
        cached = 0
        for a, b in zip(llm._input_ids[: llm.n_tokens], ids):
            if a != b:
                break
            cached += 1
        if cached >= len(ids) - 1:
            cached = 0
        llm.n_tokens = cached
        llm._ctx.kv_cache_seq_rm(-1, cached, -1)
        llm.eval(ids[cached:])

    def last_logits(self) -> np.ndarray:
        """Logits after the last evaluated token (a view: copy it to keep it past the next eval)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def eval(self, ids: list[int]) -> None:
        self.llm.eval(ids)

    def generate_ids(
        self,
        ids: list[int],
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> Iterator[int]:
        """Sampled (or greedy at temperature 0) ids after ``ids``, reusing a cached prompt prefix."""
        llm = self.llm
        if seed is not None:
            llm.set_seed(seed)
        self._keep_prefix(ids)
        if temperature <= 0:  # greedy: argmax over the logits, no sampler chain (the bare loop's cost)
            for i in range(max_new_tokens):
                tok = int(self.last_logits().argmax())
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

    def sample_text(
        self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int
    ) -> str:
        """One answer through llama-cpp-python's own completion loop (its sampler chain, EOS handling
        and prefix KV reuse), with no repetition penalty or min-p: what the GGUF teacher samples."""
        res = self.llm.create_completion(
            ids,
            max_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            min_p=0.0,
            repeat_penalty=1.0,
            seed=seed,
        )
        return res["choices"][0]["text"]

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray:
        """Raw logits predicting the token after each position in ``positions`` (0-based into ``ids``),
        computed only at those positions (never a context x vocab matrix)."""
        llm, flagged = self.llm, set(positions)
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        rows: dict[int, np.ndarray] = {}
        nb = llm.n_batch
        for start in range(0, len(ids), nb):
            chunk = ids[start : start + nb]
            llm._batch.set_batch(chunk, n_past=start, logits_all=False)
            for j in range(len(chunk)):
                llm._batch.batch.logits[j] = (start + j) in flagged
            llm._ctx.decode(llm._batch)
            for j in range(len(chunk)):
                if start + j in flagged:
                    rows[start + j] = np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(self.n_vocab,)).copy()
        self.reset()  # the KV now holds a scoring pass; the next generate re-evaluates its prompt
        return np.stack([rows[p] for p in positions])

    def reset(self) -> None:
        """Forget the KV cache (the next prompt is evaluated from scratch)."""
        self.llm.n_tokens = 0
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)

    # ------------------------------------------------------------ persisted KV state

    def save_state(self, ids: list[int], key: str) -> bytes:
        """Evaluate ``ids`` and return the KV state as ``.npz`` bytes tagged with ``key``.

        A plain ``.npz`` (never a pickle: loading one runs code); :meth:`load_state` refuses any
        other key, which names the model file and prompt the state belongs to.
        """
        self.reset()
        self.llm.eval(ids)
        st = self.llm.save_state()
        buf = io.BytesIO()
        arrays = {
            "input_ids": st.input_ids,
            "scores": st.scores,
            "n_tokens": np.array(st.n_tokens),
            "seed": np.array(st.seed),
            "llama_state": np.frombuffer(st.llama_state, dtype=np.uint8),
        }
        np.savez(buf, key=np.array(key), digest=np.array(_state_digest(arrays)), **arrays)
        return buf.getvalue()

    def load_state(self, path: Path, key: str) -> int:
        """Restore a state saved for ``key``; returns how many prompt tokens it covers."""
        try:
            with np.load(path, allow_pickle=False) as z:
                saved, digest = str(z["key"]), str(z["digest"])
                arrays = {k: z[k] for k in ("input_ids", "scores", "n_tokens", "seed", "llama_state")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise InvalidInput(f"{path}: not a prefix state file ({e})") from None
        if saved != key:
            raise InvalidInput(f"{path}: a prefix state for another model or prompt; refused")
        # The payload goes to llama.cpp's own parser: only an intact one (its digest), of this context's shape.
        if digest != _state_digest(arrays):
            raise InvalidInput(f"{path}: the prefix state is damaged (digest mismatch); refused")
        n, n_ctx, ids, scores = arrays["n_tokens"], self.llm.n_ctx(), arrays["input_ids"], arrays["scores"]
        if (
            ids.shape != (n_ctx,)
            or scores.ndim != 2
            or not 0 < scores.shape[0] <= n_ctx
            or scores.shape[1] != self.llm.n_vocab()
            or n.shape != ()
            or not 0 <= int(n) <= n_ctx
        ):
            raise InvalidInput(f"{path}: the prefix state does not fit this model's context; refused")
        state = arrays["llama_state"].tobytes()
        self.llm.load_state(
            llama_cpp.LlamaState(arrays["input_ids"], arrays["scores"], int(n), state, len(state), int(arrays["seed"]))
        )
        return self.llm.n_tokens

    def close(self) -> None:
        # Explicit close: left to interpreter shutdown, llama-cpp-python 0.3.36 raises in free_model.
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


def _state_digest(arrays: dict[str, Any]) -> str:
    """sha256 over a saved state's arrays (dtype, shape, bytes): a damaged file is refused, not parsed."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
