"""A transformers teacher: padded batches, ``num_return_sequences`` samples per prompt; greedy
answers through :func:`edge_kto.models.greedy.greedy_decode` (rows leave the batch at their EOS).

Also serves as the student sampler for on-policy rows. Sampling is seeded per batch
(transformers draws from one global generator), so results are reproducible for the same
batch composition; the llama.cpp and HTTP backends seed every sample individually.
"""

from __future__ import annotations

import torch

from ..models import load_model
from ..models.greedy import greedy_decode
from .base import GenRequest, SamplingParams, Teacher, TeacherConfig, sample_seed


class HFTeacher(Teacher):
    def __init__(self, cfg: TeacherConfig, model=None, tokenizer=None):
        self.name = cfg.display_name()
        self.batch_size = cfg.batch_size
        if model is None:
            model, tokenizer = load_model(cfg.model)
        self.model, self.tok = model, tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token

    @torch.inference_mode()
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        texts = [self.tok.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False) for r in requests]
        if params.temperature <= 0:  # one deterministic answer per prompt, repeated for each wanted index
            return [[a] * len(r.sample_indices) for a, r in zip(self._greedy(texts, params.max_new_tokens), requests)]
        old_side = self.tok.padding_side
        self.tok.padding_side = "left"
        try:
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            self.tok.padding_side = old_side
        n = max(len(r.sample_indices) for r in requests)
        torch.manual_seed(sample_seed(params.seed, requests[0].key, requests[0].sample_indices[0]))
        out = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=None,
            num_return_sequences=n,
            pad_token_id=self.tok.pad_token_id,
        )
        gen = out[:, enc["input_ids"].shape[1] :]
        decoded = [t.strip() for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        return [decoded[i * n : i * n + len(r.sample_indices)] for i, r in enumerate(requests)]

    def _greedy(self, texts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers through :func:`greedy_decode` (finished rows leave the batch; its own batch size)."""
        ids = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {self.tok.eos_token_id}
        out = greedy_decode(self.model, ids, max_new_tokens, self.tok.pad_token_id, eos_ids)
        return [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]
