"""A transformers teacher: padded batches, ``num_return_sequences`` samples per prompt.

Also serves as the student sampler for on-policy rows. Sampling is seeded per batch
(transformers draws from one global generator), so results are reproducible for the same
batch composition; the llama.cpp and HTTP backends seed every sample individually.
"""

from __future__ import annotations

import torch

from ..models import load_model
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
        old_side = self.tok.padding_side
        self.tok.padding_side = "left"
        try:
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        finally:
            self.tok.padding_side = old_side
        n = max(len(r.sample_indices) for r in requests)
        greedy = params.temperature <= 0
        torch.manual_seed(sample_seed(params.seed, requests[0].key, requests[0].sample_indices[0]))
        out = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=params.temperature if not greedy else None,
            top_p=params.top_p if not greedy else None,
            top_k=None,
            num_return_sequences=1 if greedy else n,
            pad_token_id=self.tok.pad_token_id,
        )
        gen = out[:, enc["input_ids"].shape[1] :]
        decoded = [t.strip() for t in self.tok.batch_decode(gen, skip_special_tokens=True)]
        if greedy:  # one deterministic answer per prompt, repeated for each wanted index
            return [[decoded[i]] * len(r.sample_indices) for i, r in enumerate(requests)]
        return [decoded[i * n : i * n + len(r.sample_indices)] for i, r in enumerate(requests)]
