"""Summed completion log-probs, computing the LM head only where it is needed.

A causal LM's head (576 x 49,152 for SmolLM2) costs as much as several layers; the KTO loss
needs it only at completion positions. We run the backbone, gather the hidden states that
predict completion tokens, and apply the head to those rows alone. Wrapping this in an
``nn.Module`` lets DDP wrap it, so gradient sync works under ``accelerate launch``/``torchrun``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone, lm_head) of a (possibly peft-wrapped) *ForCausalLM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, "model", None) or base.get_decoder()
    head = base.get_output_embeddings()
    if backbone is None or head is None:
        raise TypeError(f"{type(base).__name__}: cannot find the backbone and LM head of this model")
    return backbone, head


class CompletionLogps(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        backbone, head = causal_lm_parts(self.model)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        predicts = completion_mask[:, 1:].bool()  # position t-1 predicts token t
        rows = predicts.nonzero(as_tuple=True)[0]
        h = hidden[:, :-1][predicts]
        targets = input_ids[:, 1:][predicts]
        logits = head(h)
        if logits.dtype in (torch.float16, torch.bfloat16):  # softmax over the vocab in fp32, never below
            logits = logits.float()
        token_logps = -F.cross_entropy(logits, targets, reduction="none")
        return torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(
            0, rows, token_logps
        )
