"""``edge-kto run pipeline.yaml``: generate -> label -> train -> finish -> export (+ check) -> evaluate -> bench -> report.

Each stage writes into ``OUT/stages/<stage>-<key>/``, where ``key`` hashes the stage's config and
the keys of the stages it reads (the task folder's files included). A finished stage leaves
``done.json``; a rerun skips it. Change a setting and only the stages downstream of it run again;
kill the run and the next one continues: generation from its append log, training from its last
checkpoint, finished stages not at all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .jsonl import write_atomic, write_json_atomic
from .teacher.base import TeacherConfig


@dataclass
class PipelineConfig:
    task: str
    out: str = "runs/pipeline"
    name: str = "edge-kto"
    student: str = "smollm2-135m-instruct"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generate: dict[str, Any] = field(default_factory=lambda: {"n": 4, "temperature": 0.8, "max_new_tokens": 128})
    generate_eval: dict[str, Any] = field(default_factory=lambda: {"n": 2, "temperature": 0.8, "max_new_tokens": 128})
    label: dict[str, Any] = field(default_factory=lambda: {"student_samples": 2, "student_temperature": 0.8})
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (data/model/out are set here)
    finish: dict[str, Any] | None = None  # FinishConfig fields: quantization-aware finishing; absent = off
    export: dict[str, Any] = field(default_factory=lambda: {"gguf": ["Q4_K_M"]})  # ExportConfig fields
    evaluate: dict[str, Any] = field(default_factory=lambda: {"teacher": True, "student_before": True, "max_new_tokens": 128})
    bench: dict[str, Any] = field(default_factory=lambda: {"runs": 100, "warmup": 5, "n_prompt": 128, "n_gen": 64})
    limit: int | None = None  # first N prompts per split (quick runs)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        import yaml

        d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = set(cls.__dataclass_fields__)
        if set(d) - known:
            raise ValueError(f"{path}: unknown pipeline key(s) {sorted(set(d) - known)}; known: {sorted(known)}")
        teacher = d.pop("teacher", {}) or {}
        tk = set(TeacherConfig.__dataclass_fields__)
        if set(teacher) - tk:
            raise ValueError(f"{path}: unknown teacher option(s) {sorted(set(teacher) - tk)}; known: {sorted(tk)}")
        base = Path(path).parent
        if "task" in d and not Path(d["task"]).exists() and (base / d["task"]).exists():
            d["task"] = str(base / d["task"])
        defaults = cls(task="")
        for k in ("generate", "generate_eval", "label", "evaluate", "bench", "export"):
            if k in d:
                d[k] = {**getattr(defaults, k), **(d[k] or {})}
        _check_section_keys(path, d)
        return cls(teacher=TeacherConfig(**teacher), **d)


def _check_section_keys(path: str | Path, d: dict[str, Any]) -> None:
    """Sections that map onto a stage's Config: an unknown key is refused at load, before any work."""
    from dataclasses import fields

    from .export import ExportConfig
    from .finish import FinishConfig

    set_by_pipeline = {"finish": {"source", "data", "out"}, "export": {"source", "out", "golden_data", "force"}}
    for section, cls in (("finish", FinishConfig), ("export", ExportConfig)):
        given = d.get(section) or {}
        if not isinstance(given, dict):
            raise ValueError(f"{path}: {section}: expected a mapping of {cls.__name__} fields")
        allowed = {f.name for f in fields(cls)} - set_by_pipeline[section]
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise ValueError(f"{path}: {section}: unknown key(s) {unknown}; known: {sorted(allowed)}")


@dataclass
class StageRun:
    name: str
    dir: Path
    key: str
    skipped: bool
    seconds: float
    result: dict[str, Any]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _task_fingerprint(task_dir: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(task_dir).glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


class Runner:
    """Runs stages with caching by key; remembers each stage's folder for the ones after it."""

    def __init__(self, out: Path):
        self.out = out
        self.runs: dict[str, StageRun] = {}

    def stage(self, name: str, config: Any, deps: list[str], fn: Callable[[Path, bool], dict[str, Any]]) -> StageRun:
        key = _hash({"config": config, "deps": [self.runs[d].key for d in deps]})
        d = self.out / "stages" / f"{name}-{key}"
        done = d / "done.json"
        if done.is_file():
            rec = json.loads(done.read_text())
            run = StageRun(name, d, key, True, rec.get("seconds", 0.0), rec["result"])  # seconds: when it ran
            print(f"[{name}] cached ({d})", flush=True)
        else:
            resumed = d.exists()
            d.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] {'resuming' if resumed else 'running'} -> {d}", flush=True)
            t = time.perf_counter()
            result = fn(d, resumed)
            run = StageRun(name, d, key, False, time.perf_counter() - t, result)
            write_json_atomic(done, {"stage": name, "key": key, "seconds": run.seconds, "result": result})
        self.runs[name] = run
        return run


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    from . import stages

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pipeline.json", asdict(cfg))
    r = Runner(out)
    task_fp = _task_fingerprint(cfg.task)
    teacher = asdict(cfg.teacher)
    r.stage("generate", {"task": task_fp, "teacher": teacher, "gen": cfg.generate, "limit": cfg.limit}, [],
            lambda d, _: stages.generate(cfg, d, "train", cfg.generate, progress))
    r.stage("generate_eval", {"task": task_fp, "teacher": teacher, "gen": cfg.generate_eval, "limit": cfg.limit}, [],
            lambda d, _: stages.generate(cfg, d, "eval", cfg.generate_eval, progress))
    r.stage("label", {"label": cfg.label, "student": cfg.student}, ["generate"],
            lambda d, _: stages.label(cfg, d, r.runs["generate"].dir, cfg.label.get("student_samples", 0), progress))
    # The golden set's preference pairs: the teacher's eval answers plus the student's own, labelled
    # by the verifier (a greedy teacher alone gives one answer per prompt, hence no pairs).
    r.stage("label_eval", {"label": cfg.label, "student": cfg.student}, ["generate_eval"],
            lambda d, _: stages.label(cfg, d, r.runs["generate_eval"].dir, cfg.label.get("eval_student_samples", 1),
                                      progress))
    r.stage("train", {"train": cfg.train, "student": cfg.student}, ["label"],
            lambda d, resumed: stages.train(cfg, d, r.runs["label"].dir, resumed, progress))
    upstream = "train"
    if cfg.finish is not None:  # quantization-aware finishing: the export then ships its on-grid weights
        r.stage("finish", {"finish": cfg.finish}, ["train", "label"],
                lambda d, _: stages.finish(cfg, d, r.runs["train"].dir, r.runs["label"].dir, progress))
        upstream = "finish"
    r.stage("export", {"export": cfg.export}, [upstream, "label_eval"],
            lambda d, _: stages.export(cfg, d, r.runs[upstream].dir, r.runs["label_eval"].dir, progress,
                                       finished=cfg.finish is not None))
    r.stage("evaluate", {"evaluate": cfg.evaluate, "task": task_fp, "teacher": teacher, "limit": cfg.limit},
            ["export", "generate_eval"],
            lambda d, _: stages.evaluate(cfg, d, r.runs["train"].dir, r.runs["export"].dir, r.runs["generate_eval"],
                                         r.runs["finish"].dir if "finish" in r.runs else None))
    r.stage("bench", {"bench": cfg.bench, "teacher": teacher}, ["export"],
            lambda d, _: stages.bench(cfg, d, r.runs["export"].dir))
    report = stages.report(cfg, r.runs)
    write_json_atomic(out / "report.json", report)
    write_atomic(out / "report.md", report["markdown"])
    for name, png in (("curves.png", r.runs["train"].dir / "run" / "curves.png"), ("bench.png", r.runs["bench"].dir / "bench.png")):
        if png.is_file():
            shutil.copyfile(png, out / name)
    return report
