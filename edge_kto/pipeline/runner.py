"""The pipeline runner: generate -> label -> train -> finish -> export (+ check) -> evaluate -> bench -> report.

Each stage writes into ``OUT/stages/<stage>-<key>/``, where ``key`` hashes the stage's typed inputs and
the keys of the stages it reads (the task folder's files included). A finished stage leaves
``done.json``; a rerun skips it. Change a setting and only the stages downstream of it run again;
kill the run and the next one continues: generation from its append log, training from its last
checkpoint, finished stages not at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..jsonl import write_atomic, write_json_atomic
from ..precision import resolve_precision
from ..run_folder import RunFolder
from ..schema import KEY_OMITS_DEFAULT
from . import stages
from .config import PipelineConfig
from .report import report as make_report
from .rounds import RoundInputs, run_round


@dataclass
class StageRun:
    name: str
    dir: Path
    key: str
    skipped: bool
    seconds: float
    result: dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One step: its typed inputs (everything it reads, hence its key), the stages it reads, its function.

    A dependency is a stage name, or ``role=name`` when the function reads it under another name
    (``train=round2``: finishing reads the last on-policy round as "the trained student")."""

    name: str
    inputs: Any
    deps: tuple[str, ...]
    run: Callable[[Any, Path, dict[str, StageRun], bool], dict[str, Any]]

    def dep_names(self) -> list[tuple[str, str]]:
        """(role, stage name) per dependency."""
        return [(role, name or role) for role, _, name in (d.partition("=") for d in self.deps)]


def key_material(inputs: Any) -> dict[str, Any]:
    """What a stage's key hashes: its inputs as data, a task folder by content (not by path).

    A field whose metadata is ``KEY_OMITS_DEFAULT`` is left out while it holds its default, so an
    option added later does not invalidate the stages cached before it existed."""
    return {f.name: v.key() if isinstance(v, stages.TaskRef) else _key_data(v) for f, v in _key_fields(inputs)}


def _key_fields(obj: Any) -> list[tuple[dataclasses.Field, Any]]:
    return [
        (f, getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if not (f.metadata == KEY_OMITS_DEFAULT and getattr(obj, f.name) == f.default)
    ]


def _key_data(v: Any) -> Any:
    """``dataclasses.asdict`` without the omitted defaults (same nesting, so older keys are unchanged)."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _key_data(x) for f, x in _key_fields(v)}
    if isinstance(v, (list, tuple)):
        return type(v)(_key_data(x) for x in v)
    if isinstance(v, dict):
        return {k: _key_data(x) for k, x in v.items()}
    return v


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def task_fingerprint(task_dir: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(task_dir).glob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def stage_key(stage: Stage, dep_keys: dict[str, str]) -> str:
    """The folder key: the stage's typed inputs and the keys of the stages it reads, nothing else."""
    return _hash({"inputs": key_material(stage.inputs), "deps": [dep_keys[n] for _, n in stage.dep_names()]})


def plan_keys(cfg: PipelineConfig) -> dict[str, str]:
    """Every stage's key without running anything (``edge-kto run --plan``: what is cached, what reruns)."""
    keys: dict[str, str] = {}
    for stage in plan(cfg):
        keys[stage.name] = stage_key(stage, keys)
    return keys


class Runner:
    """Runs stages with caching by key; remembers each stage's folder for the ones after it."""

    def __init__(self, out: Path, progress: bool = True):
        self.out = out
        self.progress = progress
        self.runs: dict[str, StageRun] = {}

    def run(self, stage: Stage) -> StageRun:
        name, key = stage.name, stage_key(stage, {n: r.key for n, r in self.runs.items()})
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
            result = stage.run(stage.inputs, d, {role: self.runs[n] for role, n in stage.dep_names()}, self.progress)
            run = StageRun(name, d, key, False, time.perf_counter() - t, result)
            write_json_atomic(done, {"stage": name, "key": key, "seconds": run.seconds, "result": result})
        self.runs[name] = run
        return run


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The stages in order, each with exactly the settings it reads. This is the pipeline, top to bottom."""
    task = stages.TaskRef(cfg.task, task_fingerprint(cfg.task), cfg.limit)
    finished = cfg.finish is not None
    label = cfg.label
    # "auto" precision resolved here, on this machine: a stage's key records which arithmetic it ran
    train = replace(cfg.train, precision=resolve_precision(cfg.train.precision))
    augmented = cfg.augment.per_prompt > 0  # new phrasings of the training prompts
    # answered by the teacher (generate reads them) or with the intent's accepted answers (label reads them)
    read_by = ("generate" if cfg.augment.answers == "teacher" else "label") if augmented else None
    out = (
        # its key leaves out who answers: the same phrasings serve either reader
        [
            Stage(
                "augment",
                stages.AugmentInputs(task, cfg.teacher, replace(cfg.augment, answers="teacher")),
                (),
                stages.augment,
            )
        ]
        if augmented
        else []
    )
    out += [
        Stage(
            "generate",
            stages.GenerateInputs(task, cfg.teacher, cfg.generate, "train", cfg.coverage),
            ("augment",) if read_by == "generate" else (),
            stages.generate,
        ),
        Stage(
            "generate_eval", stages.GenerateInputs(task, cfg.teacher, cfg.generate_eval, "eval"), (), stages.generate
        ),
        Stage(
            "label",
            stages.LabelInputs(
                cfg.student,
                label.student_samples,
                label.student_temperature,
                cfg.generate.max_new_tokens,
                label.confusion_negatives,
                label.shared_answers,
            ),
            ("generate", "augment") if read_by == "label" else ("generate",),
            stages.label,
        ),
        # The golden set's preference pairs: the teacher's eval answers plus the student's own, labelled
        # by the verifier (a greedy teacher alone gives one answer per prompt, hence no pairs).
        Stage(
            "label_eval",
            stages.LabelInputs(
                cfg.student,
                label.eval_student_samples,
                label.student_temperature if label.eval_student_temperature is None else label.eval_student_temperature,
                cfg.generate.max_new_tokens,
            ),
            ("generate_eval",),
            stages.label,
        ),
        Stage("train", stages.TrainInputs(train, cfg.student), ("label",), stages.train),
    ]
    trained = "train"  # the stage holding the current student: train, then each on-policy round
    for k in range(1, cfg.rounds.count + 1):
        # count=k: round k is the same work whether k or more rounds follow (its key must not change)
        inputs = RoundInputs(replace(cfg.rounds, count=k), train, k, cfg.generate.max_new_tokens)
        out.append(Stage(f"round{k}", inputs, (f"previous={trained}", "generate"), run_round))
        trained = f"round{k}"
    student = "train" if trained == "train" else f"train={trained}"
    if finished:  # quantization-aware finishing: the export then ships its on-grid weights
        finish = replace(cfg.finish, precision=resolve_precision(cfg.finish.precision))
        out.append(Stage("finish", stages.FinishInputs(finish), (student, "label"), stages.finish))
    upstream = (student, "finish") if finished else (student,)
    # evaluate scores every earlier round too: "round0" is the training stage, the last round is "train"
    history = tuple("round0=train" if k == 0 else f"round{k}" for k in range(cfg.rounds.count))
    out += [
        Stage("export", stages.ExportInputs(cfg.export, task, finished), (*upstream, "label_eval"), stages.export),
        Stage(
            "evaluate",
            stages.EvaluateInputs(cfg.evaluate, task, cfg.teacher, cfg.student, cfg.generate_eval, finished),
            (*upstream, "export", "generate_eval", "label_eval", *history),
            stages.evaluate,
        ),
        Stage("bench", stages.BenchInputs(cfg.bench, cfg.teacher, task), ("export",), stages.bench),
    ]
    return out


def stages_needed(cfg: PipelineConfig, targets: set[str]) -> list[Stage]:
    """``targets`` and every stage they read, transitively, in pipeline order."""
    stages_ = plan(cfg)
    unknown = set(targets) - {s.name for s in stages_}
    if unknown:
        raise ValueError(f"no stage named {sorted(unknown)} in this pipeline (stages: {[s.name for s in stages_]})")
    needed = set(targets)
    for stage in reversed(stages_):
        if stage.name in needed:
            needed.update(n for _, n in stage.dep_names())
    return [s for s in stages_ if s.name in needed]


def run_through(cfg: PipelineConfig, targets: set[str], progress: bool = True) -> dict[str, StageRun]:
    """Run ``targets`` and what they read, nothing else (cached by key).

    Benchmarks that need part of the pipeline call this rather than naming the stages themselves, so a
    stage added upstream later (``augment``) is run wherever it is read."""
    r = Runner(Path(cfg.out), progress)
    for stage in stages_needed(cfg, targets):
        r.run(stage)
    return r.runs


def run_pipeline(cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pipeline.json", asdict(cfg))
    r = Runner(out, progress)
    for stage in plan(cfg):
        r.run(stage)
    report = make_report(cfg, r.runs)
    write_json_atomic(out / "report.json", report)
    write_atomic(out / "report.md", report["markdown"])
    for name, png in (
        ("curves.png", RunFolder(r.runs["train"].dir / "run").curves),
        ("bench.png", r.runs["bench"].dir / "bench.png"),
    ):
        if png.is_file():
            shutil.copyfile(png, out / name)
    return report
