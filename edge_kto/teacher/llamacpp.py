"""A local GGUF teacher on llama.cpp (llama-cpp-python).

The chat template is taken from the GGUF's own metadata and rendered here, then the prompt
is tokenized with special tokens parsed and BOS added only if the rendered text lacks it.
llama-cpp-python's ``create_chat_completion`` guesses a chat format and was seen to produce
garbage for SmolLM2, so we never go through it.
"""

from __future__ import annotations


from edge_kto_runtime.chat import render_chat

from ..models.loader import gguf_path
from .base import GenRequest, SamplingParams, Teacher, TeacherConfig, sample_seed
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.defaults import default_threads


class LlamaCppTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig):
        from llama_cpp import Llama

        self.path = gguf_path(cfg.model)
        self.name = cfg.display_name()
        self.batch_size = 1
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads or default_threads(),
            verbose=False,
        )
        meta = self.llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise InvalidInput(f"{self.path}: GGUF has no tokenizer.chat_template; cannot format chat prompts")
        vocab = self.llm._model
        self.bos = vocab.token_get_text(self.llm.token_bos()) if self.llm.token_bos() >= 0 else ""
        self.eos = vocab.token_get_text(self.llm.token_eos()) if self.llm.token_eos() >= 0 else ""
        self.add_bos = bool(self.llm._model.add_bos_token())

    def prompt_tokens(self, messages) -> list[int]:
        text = render_chat(self.template, messages, bos_token=self.bos, eos_token=self.eos)
        add_bos = self.add_bos and not (self.bos and text.startswith(self.bos))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        results = []
        for r in requests:
            tokens = self.prompt_tokens(r.messages)
            outs = []
            for idx in r.sample_indices:
                # No reset: llama-cpp-python keeps the KV cache of the longest common prefix, so the
                # shared system prompt / knowledge text is evaluated once, not once per sample.
                greedy = params.temperature <= 0
                res = self.llm.create_completion(
                    tokens,
                    max_tokens=params.max_new_tokens,
                    temperature=0.0 if greedy else params.temperature,
                    top_p=1.0 if greedy else params.top_p,
                    top_k=0 if not greedy else 1,
                    min_p=0.0,
                    repeat_penalty=1.0,
                    seed=sample_seed(params.seed, r.key, idx),
                )
                outs.append(res["choices"][0]["text"].strip())
            results.append(outs)
        return results

    def close(self) -> None:
        # Explicit close: left to interpreter shutdown, llama-cpp-python 0.3.36 raises in free_model.
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None
