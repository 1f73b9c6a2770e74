"""``PipelineConfig``: a pipeline YAML file, typed section by section and checked when it loads.

Each section is the Config of the stage it feeds (``train:`` is a :class:`TrainConfig`, ``export:``
an :class:`ExportConfig`, ...); the few pipeline-only sections are the small dataclasses below. A
wrong key or type anywhere stops ``edge-kto run`` before any work, naming ``file: section: key``.
Fields a stage receives from the stages before it (input and output paths) are refused in the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_kto_runtime.defaults import BENCH_N_GEN, BENCH_N_PROMPT, BENCH_RUNS, BENCH_WARMUP, MAX_NEW_TOKENS
from edge_kto_runtime.errors import InvalidInput, MissingInput

from ..augment import AugmentConfig
from ..data import read_task
from ..export import ExportConfig
from ..finish import FinishConfig
from ..generate import CoverageConfig
from ..schema import KEY_OMITS_DEFAULT, from_mapping, to_mapping
from ..teacher.base import SamplingParams, TeacherConfig
from ..train import TrainConfig
from .rounds import RoundsSection

#: Set by the pipeline from the stages before (placeholders until then); refused in the YAML.
SET_BY_PIPELINE: dict[str, dict[str, Any]] = {
    "train": {"data": "<label stage>", "model": "<student>", "out": "<train stage>"},
    "finish": {"source": "<train stage>", "data": "<label stage>", "out": "<finish stage>"},
    "export": {"source": "<train or finish stage>", "out": "<export stage>", "golden_data": None, "force": True},
}


@dataclass
class LabelSection:
    """How the label stages add the student's own samples (labeled by the task's verifier)."""

    student_samples: int = 2  # per training prompt (0: teacher answers only)
    student_temperature: float = 0.8
    eval_student_samples: int = 1  # per eval prompt: the golden set's preference pairs
    # their temperature (None: student_temperature); 0 gives the untrained student's greedy answers,
    # which evaluate then scores as "student before" instead of decoding them a second time
    eval_student_temperature: float | None = None
    # per training prompt: other intents' accepted teacher answers as undesirable rows (label/negatives.py)
    confusion_negatives: int = field(default=0, metadata=KEY_OMITS_DEFAULT)
    # per training prompt: up to this many accepted answers, borrowed from its intent's other prompts
    # where it has fewer (label/shared.py); also answers augment's phrasings when augment.answers is shared
    shared_answers: int = field(default=0, metadata=KEY_OMITS_DEFAULT)

    def validate(self) -> None:
        for name in ("confusion_negatives", "shared_answers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInput(f"{name}: must be a whole number >= 0, got {v!r}")


@dataclass
class EvaluateSection:
    """Which models the evaluate stage scores on the eval split (the bundle's artifacts always)."""

    teacher: bool = True
    student_before: bool = True
    finished: bool = True  # the finished fp32 weights, when a finish stage ran
    max_new_tokens: int = MAX_NEW_TOKENS


@dataclass
class BenchSection:
    """The latency stage: every shipped artifact, and the teacher (llama.cpp teachers)."""

    runs: int = BENCH_RUNS
    warmup: int = BENCH_WARMUP
    n_prompt: int = BENCH_N_PROMPT
    n_gen: int = BENCH_N_GEN
    threads: int | None = None
    teacher: bool = True
    teacher_runs: int = 10


@dataclass
class PipelineConfig:
    task: str
    out: str = "runs/pipeline"
    name: str = "edge-kto"
    student: str = "smollm2-135m-instruct"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generate: SamplingParams = field(default_factory=lambda: SamplingParams(n=4, temperature=0.8))
    generate_eval: SamplingParams = field(default_factory=lambda: SamplingParams(n=2, temperature=0.8))
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # new phrasings of the training prompts
    coverage: CoverageConfig = field(default_factory=CoverageConfig)  # rejection sampling of the train split
    label: LabelSection = field(default_factory=LabelSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**SET_BY_PIPELINE["train"]))
    rounds: RoundsSection = field(default_factory=RoundsSection)  # on-policy KTO rounds after train
    finish: FinishConfig | None = None  # quantization-aware finishing; absent = off
    export: ExportConfig = field(default_factory=lambda: ExportConfig(**SET_BY_PIPELINE["export"]))
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    bench: BenchSection = field(default_factory=BenchSection)
    limit: int | None = None  # first N prompts per split (quick runs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        """A pipeline file; ``extends: other.yaml`` (relative to the file) starts from another one."""
        path = Path(path)
        return cls.from_dict(read_layers(path), str(path), base=path.parent)

    @classmethod
    def from_dict(cls, d: Any, where: str = "pipeline", base: Path | None = None) -> "PipelineConfig":
        """Every section typed and validated; a section given in part keeps the others' defaults."""
        if not isinstance(d, dict):
            raise InvalidInput(f"{where}: expected a mapping of pipeline sections")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidInput(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        if "task" not in d:
            raise InvalidInput(f"{where}: task: required (a task folder: task.json, train.jsonl, eval.jsonl)")
        d = dict(d)
        if base is not None and not Path(str(d["task"])).exists() and (base / str(d["task"])).exists():
            d["task"] = str(base / str(d["task"]))
        defaults = cls(task="")
        typed: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value, default = d[f.name], getattr(defaults, f.name)
            if f.name == "finish":
                typed[f.name] = None if value is None else _section(FinishConfig, value, where, f.name, None)
            elif hasattr(default, "__dataclass_fields__"):
                typed[f.name] = _section(type(default), value, where, f.name, default)
            else:
                typed[f.name] = from_mapping(_Scalars, {f.name: value}, where).__dict__[f.name]
        cfg = cls(**typed)
        if cfg.augment.per_prompt and cfg.augment.answers == "shared" and not cfg.label.shared_answers:
            raise InvalidInput(
                f"{where}: augment: answers: shared needs label: shared_answers >= 1 "
                "(the accepted answers each new phrasing gets)"
            )
        read_task(cfg.task)  # the task folder itself: a missing file or bad row stops the run here, named
        return cfg


def read_layers(path: Path, below: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline file's mapping over the file it ``extends``, merged key by key at every depth (a
    variant names only what it changes: ``train: {lr: ...}`` keeps the rest of the base's ``train``).
    Each file's relative ``task`` is resolved against that file's folder."""
    import yaml

    if not path.is_file():
        raise MissingInput(f"{path}: no such pipeline file" + (f" (extended by {below[-1]})" if below else ""))
    d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(d, dict):
        raise InvalidInput(f"{path}: expected a mapping of pipeline sections")
    if isinstance(d.get("task"), str) and not Path(d["task"]).is_absolute() and (path.parent / d["task"]).exists():
        d["task"] = str(path.parent / d["task"])
    parent = d.pop("extends", None)
    if parent is None:
        return d
    if not isinstance(parent, str):
        raise InvalidInput(f"{path}: extends: expected a pipeline file name, got {parent!r}")
    target = (path.parent / parent).resolve()
    if target in below or target == path.resolve():
        raise InvalidInput(f"{path}: extends: {parent} extends this file again (a cycle)")
    return _merge(read_layers(target, (*below, path.resolve())), d)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class _Scalars:
    """The top-level scalar keys, for their type checks."""

    task: str = ""
    out: str = ""
    name: str = ""
    student: str = ""
    limit: int | None = None


def _section(cls: type, value: Any, where: str, name: str, default: Any) -> Any:
    """One section: the user's keys over the pipeline's defaults for it, fixed fields filled."""
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"{where}: {name}: expected a mapping of {cls.__name__} fields, got {value!r}")
    fixed = SET_BY_PIPELINE.get(name, {})
    base = to_mapping(default, drop=fixed) if default is not None else {}
    section = from_mapping(cls, {**base, **(value or {})}, f"{where}: {name}", fixed=fixed)
    if cls is ExportConfig:  # candidate names and options (GGUF types, ONNX variants) too, before any work
        try:
            copy.deepcopy(section).candidates()
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {name}: {e}") from None
    return section
