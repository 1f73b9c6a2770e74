"""Stage 3: KTO distillation of the student (LoRA; reference = the adapter-disabled base).

Today: the loss, z0 estimate, tokenization, batch plan and completion log-probs. The training
loop and ``edge-kto train`` are not here yet (issue 3).
"""

from .loss import KTOLossOutput, estimate_z0, kto_loss

__all__ = ["KTOLossOutput", "estimate_z0", "kto_loss"]
