"""``BatchedDecoder``: many sequences decoded together on one llama.cpp model (continuous batching).

Why: one ``llama_decode`` over B sequences (one new token each) reads the weights once and runs
llama.cpp's batched kernels, so B answers cost less than B single decodes. This is how
llama-server's parallel slots work; the GGUF teacher uses it to sample P prompts x n answers. On a
2-core CPU decoding is mostly compute-bound, so the gain is ~2x at P=16, not P-fold
(``benchmarks/teacher_throughput.py``; RESULTS.md).

An answer should depend on its prompt and seed, not on what ran beside it, so that a resumed job
writes what an uninterrupted one would have. llama.cpp's CPU kernels round a token differently
depending on how its batch is split, so:

- Each slot is its own KV stream (``kv_unified = false``): a sequence's cells sit at the same
  offsets whichever slot it runs in.
- The prompt prefix (the caller passes one fixed by the system prompt; default: the requests'
  longest common prefix) is evaluated once into a spare stream and copied into a slot when the slot
  takes a request (``llama_memory_seq_cp``).
- A new request's prompt suffix is evaluated in a ``llama_decode`` of its own; decode steps hold
  one token per active slot. (Mixing a suffix into a decode step changed answers on SmolLM2.)
- Each request samples with its own sampler chain (the chain ``Llama.create_completion`` builds:
  top-k, typical 1.0, top-p, min-p 0, temperature, dist(seed); greedy at temperature 0).

With these, answers on SmolLM2 Q4_1 do not depend on the batch (``tests/test_llama_batched.py``,
``tests/test_generate.py``: a resumed file equals an uninterrupted one). On the demo's Qwen2.5
Q4_K_M teacher, 1 of 16 greedy answers still changed with the number of slots: on that model
llama.cpp's CPU path rounds a token differently depending on how many rows its evaluation call
holds (seen one sequence at a time too, with and without weight repacking; which kernel does it was
not found), and padding steps to whole 4-row tiles did not remove it. ``parallel: 1`` is the
one-at-a-time path for a user who needs bit-identical answers to it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from .errors import ToolError
from .llama_engine import LlamaEngine, llama_cpp

#: Prefill chunk and micro-batch, as ``llama_cpp.Llama`` uses them (same rounding as the sequential path).
N_BATCH = 512


@dataclass
class DecodeRequest:
    """One answer to produce: prompt ids, and the seed of its sampler."""

    ids: list[int]
    seed: int = 0


@dataclass
class _Slot:
    index: int  # which request
    req: DecodeRequest
    sampler: object
    pos: int  # next position to write
    pending: list[int]  # tokens to evaluate next step (prompt suffix, then one sampled token)
    out: list[int] = field(default_factory=list)


def _sampler_chain(temperature: float, top_p: float, top_k: int, seed: int) -> object:
    """The sampler ``Llama.create_completion`` uses with ``min_p=0``, ``repeat_penalty=1``."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if temperature <= 0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    for s in (
        llama_cpp.llama_sampler_init_top_k(top_k),
        llama_cpp.llama_sampler_init_typical(1.0, 1),
        llama_cpp.llama_sampler_init_top_p(top_p, 1),
        llama_cpp.llama_sampler_init_min_p(0.0, 1),
        llama_cpp.llama_sampler_init_temp(temperature),
        llama_cpp.llama_sampler_init_dist(seed),
    ):
        llama_cpp.llama_sampler_chain_add(chain, s)
    return chain


class BatchedDecoder:
    """Up to ``n_parallel`` sequences in flight on ``engine``'s model, each in its own KV stream.

    Owns a second llama.cpp context (the engine keeps the model and its own context); ``close``
    frees it. ``n_ctx_seq``: room per sequence (prompt + answer), rounded up to 256 by llama.cpp.
    """

    def __init__(self, engine: LlamaEngine, n_parallel: int, n_ctx_seq: int, n_threads: int | None = None):
        if not 1 <= n_parallel < N_BATCH:
            raise ValueError(
                f"n_parallel must be 1..{N_BATCH - 1} (one decode step holds a token per slot), got {n_parallel}"
            )
        n_ctx_seq = -(-n_ctx_seq // 256) * 256  # llama.cpp pads each stream to 256 cells
        self.engine, self.n_parallel = engine, n_parallel
        self.prefix_seq = n_parallel  # the spare stream holding the shared prompt prefix
        p = llama_cpp.llama_context_default_params()
        p.n_seq_max = n_parallel + 1
        p.kv_unified = False
        p.n_ctx = n_ctx_seq * p.n_seq_max
        p.n_batch = p.n_ubatch = N_BATCH
        threads = n_threads or engine.n_threads
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as LlamaEngine's context
        self.model = engine.model_ptr
        self.ctx = llama_cpp.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise ToolError(f"{engine.path}: llama.cpp could not create a {n_parallel}-sequence context")
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self._prefix: list[int] = []
        self._end_ids: set[int] | None = None

    # ------------------------------------------------------------ batch plumbing

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """Decode ``(token, pos, seq, wants_logits)`` items (at most N_BATCH) in one call."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise ToolError(f"{self.engine.path}: llama_decode failed ({rc}) with {len(items)} tokens in the batch")

    def _set_prefix(self, prefix: list[int]) -> None:
        """Evaluate the shared prefix into the spare stream (kept while the next call shares it)."""
        if prefix == self._prefix:
            return
        llama_cpp.llama_memory_seq_rm(self.mem, self.prefix_seq, -1, -1)
        for start in range(0, len(prefix), N_BATCH):
            chunk = prefix[start : start + N_BATCH]
            self._decode([(t, start + j, self.prefix_seq, False) for j, t in enumerate(chunk)])
        self._prefix = list(prefix)

    # ------------------------------------------------------------ decoding

    def run(
        self,
        requests: list[DecodeRequest],
        max_new_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        top_k: int = 0,
        prefix: list[int] | None = None,
        end_ids: set[int] | None = None,
    ) -> Iterator[tuple[int, list[int]]]:
        """Yield ``(request index, answer ids)`` as each request finishes (not in request order).

        An answer stops at an end-of-generation token (not included) or after ``max_new_tokens``;
        with ``end_ids``, at one of those ids instead, kept as the answer's last token (what a loop
        over :meth:`LlamaEngine.generate_ids` that stops at a tokenizer's EOS ids returns).
        ``prefix``: the ids every prompt starts with, evaluated once (default: their longest common
        prefix). Pass one that does not depend on which requests are in the call (the rendered system
        prompt) to make an answer independent of the other requests: a prompt evaluated as prefix +
        suffix rounds differently from one split elsewhere.
        """
        if not requests:
            return
        too_long = [i for i, r in enumerate(requests) if len(r.ids) + max_new_tokens > self.n_ctx_seq]
        if too_long:
            i = too_long[0]
            raise ValueError(
                f"request {i}: {len(requests[i].ids)} prompt + {max_new_tokens} new tokens exceed the "
                f"{self.n_ctx_seq} tokens per sequence"
            )
        if prefix is None:
            prefix = shared_prefix([r.ids for r in requests])
        bad = [i for i, r in enumerate(requests) if len(r.ids) <= len(prefix) or r.ids[: len(prefix)] != prefix]
        if bad:
            raise ValueError(f"request {bad[0]}: its prompt does not extend the shared prefix of {len(prefix)} tokens")
        self._set_prefix(prefix)
        self._end_ids = end_ids
        queue = deque(range(len(requests)))
        slots: list[_Slot | None] = [None] * self.n_parallel
        try:
            while queue or any(slots):
                for s in range(self.n_parallel):
                    if slots[s] is None and queue:
                        slots[s] = self._start(s, queue.popleft(), requests, temperature, top_p, top_k)
                yield from self._step(slots, max_new_tokens)
        finally:
            for slot in slots:
                if slot is not None:
                    llama_cpp.llama_sampler_free(slot.sampler)

    def _start(self, s: int, index: int, requests: list[DecodeRequest], temp: float, top_p: float, top_k: int) -> _Slot:
        req = requests[index]
        n = len(self._prefix)
        llama_cpp.llama_memory_seq_rm(self.mem, s, -1, -1)
        if n:
            llama_cpp.llama_memory_seq_cp(self.mem, self.prefix_seq, s, -1, -1)
        return _Slot(index, req, _sampler_chain(temp, top_p, top_k, req.seed), n, list(req.ids[n:]))

    def _step(self, slots: list[_Slot | None], max_new_tokens: int) -> Iterator[tuple[int, list[int]]]:
        """Evaluate new slots' prompt suffixes, one slot per llama_decode; else one decode step for all.

        A suffix is never mixed with other sequences' tokens: llama.cpp then splits the batch
        differently and an answer would depend on what ran beside it (seen on SmolLM2 Q4_1).
        """
        new = [s for s, slot in enumerate(slots) if slot is not None and slot.pos < len(slot.req.ids)]
        for s in new:
            slot = slots[s]
            while len(slot.pending) > N_BATCH:
                chunk, slot.pending = slot.pending[:N_BATCH], slot.pending[N_BATCH:]
                self._decode([(t, slot.pos + j, s, False) for j, t in enumerate(chunk)])
                slot.pos += len(chunk)
            yield from self._advance(slots, [s], max_new_tokens)
        if not new:
            active = [s for s, slot in enumerate(slots) if slot is not None]
            yield from self._advance(slots, active, max_new_tokens)

    def _advance(
        self, slots: list[_Slot | None], which: list[int], max_new_tokens: int
    ) -> Iterator[tuple[int, list[int]]]:
        """Decode the pending tokens of ``which`` (all fit one batch) and sample each one's next token."""
        items: list[tuple[int, int, int, bool]] = []
        takes: list[tuple[int, int]] = []  # (slot, batch row of its logits)
        for s in which:
            slot = slots[s]
            for j, tok in enumerate(slot.pending):
                items.append((tok, slot.pos + j, s, j == len(slot.pending) - 1))
            slot.pos += len(slot.pending)
            takes.append((s, len(items) - 1))
        self._decode(items)
        for s, row in takes:
            slot = slots[s]
            tok = llama_cpp.llama_sampler_sample(slot.sampler, self.ctx, row)
            if self._end_ids is not None and tok in self._end_ids:
                slot.out.append(tok)
                yield self._finish(slots, s)
                continue
            if self._end_ids is None and llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                yield self._finish(slots, s)
                continue
            slot.out.append(tok)
            if len(slot.out) >= max_new_tokens:
                yield self._finish(slots, s)
                continue
            slot.pending = [tok]

    def _finish(self, slots: list[_Slot | None], s: int) -> tuple[int, list[int]]:
        slot = slots[s]
        llama_cpp.llama_sampler_free(slot.sampler)
        slots[s] = None
        return slot.index, slot.out

    def close(self) -> None:
        if getattr(self, "ctx", None):
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def __enter__(self) -> "BatchedDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest prefix of every prompt, short of each one's last token (its logits are sampled)."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return list(first[: max(n, 0)])
