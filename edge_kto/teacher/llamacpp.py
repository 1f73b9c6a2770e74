"""A local GGUF teacher on llama.cpp, through the runtime's :class:`LlamaEngine`.

The chat template is taken from the GGUF's own metadata and rendered here; the engine's one BOS
rule turns it into ids. llama-cpp-python's ``create_chat_completion`` guesses a chat format and
was seen to produce garbage for SmolLM2, so we never go through it.

``parallel > 1`` (the default) decodes that many answers together (:class:`BatchedDecoder`:
continuous batching, the shared system prompt / knowledge text evaluated once); ``parallel: 1``
is the one-at-a-time path. Both sample with the same sampler chain and per-sample seeds.
"""

from __future__ import annotations

from collections.abc import Iterator

from edge_kto_runtime.chat import render_chat
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.llama_batched import BatchedDecoder, DecodeRequest
from edge_kto_runtime.llama_engine import LlamaEngine

from ..models.loader import gguf_path
from .base import GenRequest, SamplingParams, Teacher, TeacherConfig, sample_seed


class LlamaCppTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig):
        self.path = gguf_path(cfg.model)
        self.name = cfg.display_name()
        self.parallel = cfg.parallel
        self.batch_size = 1
        self.decoder: BatchedDecoder | None = None
        self.engine = LlamaEngine(self.path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
        self.template = self.engine.chat_template
        if not self.template:
            self.close()
            raise InvalidInput(f"{self.path}: GGUF has no tokenizer.chat_template; cannot format chat prompts")
        self.bos, self.eos = self.engine.special_text()

    def prompt_tokens(self, messages) -> list[int]:
        return self.engine.prompt_ids(render_chat(self.template, messages, bos_token=self.bos, eos_token=self.eos))

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        out: list[dict[int, str]] = [{} for _ in requests]
        for i, k, text in self.stream(requests, params):
            out[i][k] = text
        return [[texts[k] for k in r.sample_indices] for texts, r in zip(out, requests)]

    def stream(self, requests: list[GenRequest], params: SamplingParams) -> Iterator[tuple[int, int, str]]:
        greedy = params.temperature <= 0
        temp, top_p, top_k = (0.0, 1.0, 1) if greedy else (params.temperature, params.top_p, 0)
        if self.parallel == 1:
            for i, r in enumerate(requests):
                # No reset between samples: the engine keeps the KV cache of the longest common prefix, so
                # the shared system prompt / knowledge text is evaluated once, not once per sample.
                tokens = self.prompt_tokens(r.messages)
                for k in r.sample_indices:
                    seed = sample_seed(params.seed, r.key, k)
                    yield i, k, self.engine.sample_text(tokens, params.max_new_tokens, temp, top_p, top_k, seed).strip()
            return
        prompts = [self.prompt_tokens(r.messages) for r in requests]
        jobs = [(i, k) for i, r in enumerate(requests) for k in r.sample_indices]
        decode = [DecodeRequest(prompts[i], sample_seed(params.seed, requests[i].key, k)) for i, k in jobs]
        if not decode:
            return
        decoder = self._decoder(max(len(p) for p in prompts) + params.max_new_tokens)
        head = self._template_head(requests[0].messages)
        prefix = head if all(len(p) > len(head) and p[: len(head)] == head for p in prompts) else None
        for j, ids in decoder.run(decode, params.max_new_tokens, temp, top_p, top_k, prefix=prefix):
            i, k = jobs[j]
            yield i, k, self.engine.text(ids, prompts[i]).strip()

    def _template_head(self, messages) -> list[int]:
        """The ids of the rendered prompt before its last message's text (system prompt, knowledge
        text, earlier turns): the shared prefix, fixed by the messages alone, so which requests a
        resumed run still has does not move where a prompt is split."""
        a, b = (self.prompt_tokens([*messages[:-1], {**messages[-1], "content": c}]) for c in ("A", "B"))
        return a[: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))]

    def _decoder(self, n_ctx_seq: int) -> BatchedDecoder:
        """The batched context, rebuilt only when a longer prompt + answer than it holds comes."""
        if self.decoder is None or self.decoder.n_ctx_seq < n_ctx_seq:
            if self.decoder is not None:
                self.decoder.close()
            self.decoder = BatchedDecoder(self.engine, self.parallel, n_ctx_seq)
        return self.decoder

    def close(self) -> None:
        if getattr(self, "decoder", None) is not None:
            self.decoder.close()  # before the engine: the context uses the engine's model
            self.decoder = None
        if getattr(self, "engine", None) is not None:
            self.engine.close()
            self.engine = None
