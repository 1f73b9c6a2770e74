"""Stage 3: KTO distillation of the student (LoRA; reference = the adapter-disabled base).

``run_train(TrainConfig(...))`` is the stage; ``recipe.py`` reads top to bottom.
"""

from .config import LoraConfig, TrainConfig
from .examples import TrainDataError
from .loss import KTOLossOutput, estimate_z0, kto_loss
from .recipe import TrainResult, run_train

__all__ = [
    "KTOLossOutput",
    "LoraConfig",
    "TrainConfig",
    "TrainDataError",
    "TrainResult",
    "estimate_z0",
    "kto_loss",
    "run_train",
]
