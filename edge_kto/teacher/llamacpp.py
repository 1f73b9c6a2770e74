"""A local GGUF teacher on llama.cpp, through the runtime's :class:`LlamaEngine`.

The chat template is taken from the GGUF's own metadata and rendered here; the engine's one BOS
rule turns it into ids. llama-cpp-python's ``create_chat_completion`` guesses a chat format and
was seen to produce garbage for SmolLM2, so we never go through it.
"""

from __future__ import annotations

from edge_kto_runtime.chat import render_chat
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.llama_engine import LlamaEngine

from ..models.loader import gguf_path
from .base import GenRequest, SamplingParams, Teacher, TeacherConfig, sample_seed


class LlamaCppTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig):
        self.path = gguf_path(cfg.model)
        self.name = cfg.display_name()
        self.batch_size = 1
        self.engine = LlamaEngine(self.path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads)
        self.template = self.engine.chat_template
        if not self.template:
            self.close()
            raise InvalidInput(f"{self.path}: GGUF has no tokenizer.chat_template; cannot format chat prompts")
        self.bos, self.eos = self.engine.special_text()

    def prompt_tokens(self, messages) -> list[int]:
        return self.engine.prompt_ids(render_chat(self.template, messages, bos_token=self.bos, eos_token=self.eos))

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        greedy = params.temperature <= 0
        results = []
        for r in requests:
            tokens = self.prompt_tokens(r.messages)
            # No reset between samples: the engine keeps the KV cache of the longest common prefix, so
            # the shared system prompt / knowledge text is evaluated once, not once per sample.
            results.append(
                [
                    self.engine.sample_text(
                        tokens,
                        params.max_new_tokens,
                        0.0 if greedy else params.temperature,
                        1.0 if greedy else params.top_p,
                        1 if greedy else 0,
                        sample_seed(params.seed, r.key, idx),
                    ).strip()
                    for idx in r.sample_indices
                ]
            )
        return results

    def close(self) -> None:
        if getattr(self, "engine", None) is not None:
            self.engine.close()
            self.engine = None
