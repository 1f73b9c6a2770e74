"""The run folder: what ``edge-kto train`` and ``edge-kto finish`` write, and what export, check,
finish and the pipeline read. One owner for the layout, as ``edge_kto_runtime.bundle`` owns the bundle.

::

    RUN/
      config.json          the job's config (TrainConfig / FinishConfig + world size), written first
      metrics.jsonl        per-step metrics (an append log: a killed run keeps its lines)
      checkpoints/step-N/  resumable state (the newest kept)
      adapter/             the LoRA adapter (training runs)
      model/               the fp model as a transformers folder (merged LoRA / finished weights)
      curves.png           loss and reward curves (training runs)
      train_report.json    written last: the run is complete (finish folders: finish_report.json)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_kto_runtime.errors import MissingInput

TRAIN, FINISH = "train", "finish"


@dataclass(frozen=True)
class RunFolder:
    root: Path
    kind: str = TRAIN  # "train" or "finish": names the report that marks it complete

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """A finish folder if it holds a finish report, else a training run folder."""
        p = Path(path)
        return cls(p, FINISH if (p / "finish_report.json").is_file() else TRAIN)

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def report_path(self) -> Path:
        return self.root / f"{self.kind}_report.json"

    def finished(self) -> bool:
        return self.report_path.is_file()

    def has_model(self) -> bool:
        return (self.model / "config.json").is_file()

    def is_training_run(self) -> bool:
        return self.config_path.is_file() and self.adapter.is_dir()

    def has_checkpoint(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("step-*"))

    def config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def report(self) -> dict[str, Any]:
        """The final report ({} while the run is unfinished)."""
        return json.loads(self.report_path.read_text()) if self.finished() else {}


def fp_model_dir(source: str | Path, need_weights: bool = False) -> Path | None:
    """A run folder's ``model/``, or ``source`` itself when it is a transformers folder; else None.

    ``need_weights``: the folder must hold ``*.safetensors`` (not only a config)."""
    p = Path(source)
    run = RunFolder(p)
    if run.has_model():
        return run.model
    if (p / "config.json").is_file() and (not need_weights or any(p.glob("*.safetensors"))):
        return p
    return None


def require_fp_model_dir(source: str | Path) -> Path:
    found = fp_model_dir(source, need_weights=True)
    if found is None:
        raise MissingInput(f"{source}: not a training run folder with a merged model/ nor an HF model folder")
    return found
