"""Stage 3: KTO distillation of the student (LoRA; reference = the adapter-disabled base)."""

from .config import TrainConfig
from .loss import KTOLossOutput, estimate_z0, kto_loss

__all__ = ["KTOLossOutput", "TrainConfig", "estimate_z0", "kto_loss"]
