"""``edge-kto run pipeline.yaml``: the whole chain from one YAML file, each stage cached by its inputs.

- :mod:`.config`: the YAML file as typed sections (each the Config of its stage), checked at load.
- :mod:`.stages`: per stage, the typed inputs it reads (its key) and the function it runs.
- :mod:`.runner`: the plan (stages in order with their dependencies), caching, resume.
- :mod:`.report`: the final table.
"""

from .config import BenchSection, EvaluateSection, LabelSection, PipelineConfig
from .runner import Runner, Stage, StageRun, plan, plan_keys, run_pipeline

__all__ = [
    "BenchSection",
    "EvaluateSection",
    "LabelSection",
    "PipelineConfig",
    "Runner",
    "Stage",
    "StageRun",
    "plan",
    "plan_keys",
    "run_pipeline",
]
