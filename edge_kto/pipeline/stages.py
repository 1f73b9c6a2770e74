"""The pipeline's stages: for each, the typed inputs it reads (its cache key) and the function it runs.

A stage function receives its ``*Inputs`` (the settings it reads, nothing more), its own folder,
and the stages it depends on; it cannot read a setting outside its key, since it is never handed
the whole :class:`PipelineConfig`. The runner (:mod:`.runner`) hashes the inputs and the keys of
the dependencies into the folder name; a changed setting reruns exactly the stages that read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..augment import AugmentConfig
from ..data import read_task
from ..export import ExportConfig
from ..finish import FinishConfig
from ..generate import CoverageConfig
from ..jsonl import write_atomic, write_jsonl_atomic
from ..run_folder import FINISH, RunFolder
from ..schema import KEY_OMITS_DEFAULT
from ..teacher.base import SamplingParams, TeacherConfig
from ..train import TrainConfig
from .config import BenchSection, EvaluateSection


@dataclass(frozen=True)
class TaskRef:
    """A task folder. Its key is the content (``fingerprint``) and ``limit``, not where it lies."""

    dir: str
    fingerprint: str
    limit: int | None = None

    def key(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "limit": self.limit}

    def load(self) -> Any:
        task = read_task(self.dir)
        if self.limit:
            task = replace(task, eval=task.eval[: self.limit], train=task.train[: self.limit])
        return task


@dataclass(frozen=True)
class AugmentInputs:
    task: TaskRef
    teacher: TeacherConfig
    augment: AugmentConfig


def augment(inp: AugmentInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    """New phrasings of the training prompts (``prompts.jsonl``), never near an eval prompt."""
    from ..augment import run_augment

    res = run_augment(inp.task.load(), inp.augment, d, inp.teacher, progress=progress)
    return {
        "sources": res.sources,
        "kept": res.kept,
        "refused_eval_near_duplicates": res.refused_eval,
        "refused_duplicates": res.refused_duplicate,
        "seconds": res.seconds,
    }


@dataclass(frozen=True)
class GenerateInputs:
    task: TaskRef
    teacher: TeacherConfig
    sampling: SamplingParams
    split: str  # "train" (training rows) or "eval" (golden set, evaluation)
    coverage: CoverageConfig = field(default=CoverageConfig(), metadata=KEY_OMITS_DEFAULT)  # train split only


def generate(inp: GenerateInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    from ..generate import GenerateConfig, run_generate

    res = run_generate(
        GenerateConfig(
            prompts=inp.task.dir,
            out=str(d / "candidates.jsonl"),
            teacher=inp.teacher,
            sampling=inp.sampling,
            split=inp.split,
            limit=inp.task.limit,
            extra_prompts=str(deps["augment"].dir / "prompts.jsonl") if "augment" in deps else None,
            coverage=inp.coverage,
            progress=progress,
        )
    )
    out = {"prompts": res.prompts, "written": res.written, "resumed_skipped": res.skipped, "seconds": res.seconds}
    if res.coverage is not None:
        out["coverage"] = res.coverage
    return out


@dataclass(frozen=True)
class LabelInputs:
    student: str
    student_samples: int  # the student's own samples per prompt, labeled like the teacher's
    student_temperature: float
    max_new_tokens: int  # the student's answer budget (the pipeline's generate.max_new_tokens)
    confusion_negatives: int = field(default=0, metadata=KEY_OMITS_DEFAULT)  # training labels only
    shared_answers: int = field(default=0, metadata=KEY_OMITS_DEFAULT)  # training labels only


def label(inp: LabelInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Verifier labels for the candidates of the generate stage it depends on, plus the student's; with an
    ``augment`` dependency (``answers: shared``) its phrasings are answered with shared answers."""
    from ..label import LabelConfig, OnPolicyConfig, run_label

    gen = next(v for k, v in deps.items() if k != "augment")
    op = None
    if inp.student_samples > 0:
        op = OnPolicyConfig(
            inp.student,
            SamplingParams(
                n=inp.student_samples, temperature=inp.student_temperature, max_new_tokens=inp.max_new_tokens
            ),
        )
    res = run_label(
        LabelConfig(
            candidates=str(gen.dir / "candidates.jsonl"),
            out=str(d / "kto.jsonl"),
            on_policy=op,
            confusion_negatives=inp.confusion_negatives,
            shared_answers=inp.shared_answers,
            phrasings=str(deps["augment"].dir / "prompts.jsonl") if "augment" in deps else None,
            progress=progress,
        )
    )
    return res.summary


@dataclass(frozen=True)
class TrainInputs:
    train: TrainConfig  # data / model / out are set here
    student: str


def train(inp: TrainInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    from ..train import run_train

    run = RunFolder(d / "run")
    if run.finished():  # finished before the kill that lost done.json
        return run.report()
    tc = replace(inp.train, data=str(deps["label"].dir / "kto.jsonl"), model=inp.student, out=str(run.root))
    has_ckpt = run.has_checkpoint()
    res = run_train(tc, resume=has_ckpt, force=not has_ckpt, progress=progress)
    return res.report


@dataclass(frozen=True)
class FinishInputs:
    finish: FinishConfig  # source / data / out are set here


def finish(inp: FinishInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Quantization-aware finishing of the trained student on the training rows (never the eval split)."""
    from ..finish import run_finish

    fc = replace(
        inp.finish,
        source=str(deps["train"].dir / "run"),
        data=str(deps["label"].dir / "kto.jsonl"),
        out=str(d / "finish"),
    )
    res = run_finish(fc, progress=progress)
    return {
        "model": str(res.model_dir),
        "steps": res.steps,
        "resumed_from": res.resumed_from,
        "final": res.final,
        "seconds": res.seconds,
    }


GATE_ANSWERS = "gate_answers.json"  # the export stage's record of what the gate's artifacts answered


@dataclass(frozen=True)
class ExportInputs:
    export: ExportConfig  # source / out / golden_data are set here
    task: TaskRef  # its verifier scores the gate; its eval split is the golden set if label_eval wrote none
    finished: bool  # ship the finish stage's on-grid weights instead of the trained run's


def export(inp: ExportInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    from ..export import run_export

    golden = deps["label_eval"].dir / "kto.jsonl"
    if not golden.is_file() or not golden.read_text().strip():
        golden = Path(inp.task.dir)
    source = deps["finish"].dir / "finish" if inp.finished else deps["train"].dir / "run"
    verifier = inp.export.golden_verifier or read_task(inp.task.dir).verifier
    ec = replace(
        inp.export,
        golden_verifier=verifier,
        source=str(source),
        out=str(d / "bundle"),
        golden_data=str(golden),
        force=True,
    )
    res = run_export(ec, progress=progress)
    if res.alignment is not None:  # each candidate's greedy answers: evaluate scores them instead of decoding again
        write_atomic(
            d / GATE_ANSWERS,
            json.dumps({r["artifact"]: [row["answer"] for row in r["rows"]] for r in res.alignment.results}),
        )
    return {
        "bundle": str(res.bundle),
        "timings": res.timings,
        "alignment": res.manifest.get("alignment"),
        "selection": res.manifest.get("selection"),
        "artifacts": [
            {k: a.get(k) for k in ("path", "quant", "bytes", "bits_per_weight")} for a in res.manifest["artifacts"]
        ],
    }


def _teacher_from_generate_eval(gen_eval: Any, sampling: SamplingParams, task: Any, max_new_tokens: int):
    """The teacher's greedy eval answers, when generate_eval already wrote exactly those.

    With ``generate_eval: {n: 1, temperature: 0}`` and the same token budget, generate_eval ran the
    very decode the teacher's accuracy needs; scoring its output saves the slowest model a second
    pass over the eval split. Returns None when the settings differ.
    """
    from ..evaluate import score_answers
    from ..jsonl import iter_jsonl

    if sampling.n != 1 or sampling.temperature > 0 or sampling.max_new_tokens != max_new_tokens:
        return None
    by_id = {row["prompt_id"]: row["completion"] for _, row in iter_jsonl(gen_eval.dir / "candidates.jsonl")}
    if any(it.id not in by_id for it in task.eval):
        return None
    return score_answers("teacher (with context)", task, [by_id[it.id] for it in task.eval], gen_eval.seconds)


def _student_before_from_label_eval(label_eval: Any, task: Any, max_new_tokens: int):
    """The untrained student's greedy eval answers, when label_eval drew exactly those.

    With ``label: {eval_student_temperature: 0}`` label_eval decodes the untrained student greedily
    on every eval prompt with the same budget, which is all "student before" needs. Returns None
    when it did not (sampled answers, another budget, or a prompt whose answer was deduplicated away).
    """
    from ..evaluate import score_answers
    from ..jsonl import iter_jsonl

    by_id: dict[str, str] = {}
    for _, row in iter_jsonl(label_eval.dir / "kto.jsonl"):
        sp = row.get("sampling") or {}
        greedy = sp.get("temperature", 1.0) <= 0 and sp.get("max_new_tokens") == max_new_tokens
        if row.get("source") == "student" and greedy:
            by_id.setdefault(row["prompt_id"], row["completion"])
    if any(it.id not in by_id for it in task.eval):
        return None
    return score_answers("student before", task, [by_id[it.id] for it in task.eval], 0.0)


@dataclass(frozen=True)
class EvaluateInputs:
    evaluate: EvaluateSection
    task: TaskRef
    teacher: TeacherConfig
    student: str
    generate_eval: SamplingParams  # whether generate_eval's answers are the teacher's greedy ones
    finished: bool


def evaluate(inp: EvaluateInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Task accuracy of every model on the eval split; each row says what it scored (``kind``, ``artifact``)."""
    from edge_kto_runtime import open_bundle

    from ..evaluate import eval_artifact, eval_teacher, gate_answers, golden_fp_answers, score_answers

    task, e = inp.task.load(), inp.evaluate
    mx = e.max_new_tokens
    results: list[tuple[Any, dict[str, Any]]] = []
    if e.teacher:
        r = _teacher_from_generate_eval(deps["generate_eval"], inp.generate_eval, task, mx) or eval_teacher(
            "teacher (with context)", inp.teacher, task, with_context=True, max_new_tokens=mx
        )
        results.append((r, {"kind": "teacher"}))
    if e.student_before:
        r = _student_before_from_label_eval(deps["label_eval"], task, mx)
        what = {"kind": "student_before", **({"answers": "label_eval"} if r is not None else {})}
        r = r or eval_teacher("student before", TeacherConfig(kind="hf", model=inp.student), task, False, mx)
        results.append((r, what))
    rounds = sorted((int(k[5:]) for k in deps if k.startswith("round")))  # earlier on-policy rounds, if any
    for k in rounds:  # accuracy round over round: 0 is the recipe's training, the last one follows below
        model = TeacherConfig(kind="hf", model=str(RunFolder(deps[f"round{k}"].dir / "run").model))
        r = eval_teacher(f"student after round {k} (fp)", model, task, False, mx)
        results.append((r, {"kind": "student_round", "round": k}))
    fp_run = deps["train"].dir / "run"
    bundle = deps["export"].dir / "bundle"
    name, what = f"student after KTO (fp{', round ' + str(len(rounds)) if rounds else ''})", {"kind": "student_fp"}
    if rounds:
        what["round"] = len(rounds)
    golden = golden_fp_answers(bundle, task, mx, fp_run)  # the export decoded these greedy answers already
    if golden is not None:
        results.append((score_answers(name, task, golden, 0.0), {**what, "answers": "golden set"}))
    else:
        fp = TeacherConfig(kind="hf", model=str(RunFolder(fp_run).model))
        results.append((eval_teacher(name, fp, task, False, mx), what))
    if inp.finished and e.finished:  # the finished weights in torch: what 4-bit should reproduce
        name, what = "student finished (fp32, on the 4-bit grid)", {"kind": "student_finished"}
        answers = golden_fp_answers(bundle, task, mx, fp_run, finished=deps["finish"].dir / "finish")
        if answers is not None:  # the export decoded these for the gate's paired reference
            results.append((score_answers(name, task, answers, 0.0), {**what, "answers": "golden set"}))
        else:
            fin = TeacherConfig(kind="hf", model=str(RunFolder(deps["finish"].dir / "finish", FINISH).model))
            results.append((eval_teacher(name, fin, task, False, mx), what))
    gate = gate_answers(deps["export"].dir / GATE_ANSWERS, bundle, task, mx)
    for art in open_bundle(bundle, verify=False).artifacts:
        name, what = f"student after, {art.quant}", {"kind": "artifact", "artifact": art.path, "quant": art.quant}
        if art.path in gate:
            r = score_answers(name, task, gate[art.path], 0.0)
            what["answers"] = "export gate"
        else:
            r = eval_artifact(name, str(bundle), art.path, task, mx)
        results.append((r, {**what, "backend": art.backend}))
    write_jsonl_atomic(d / "outputs.jsonl", [{"model": r.name, **o} for r, _ in results for o in r.outputs])
    return {"results": [{**r.row(), **what} for r, what in results]}


@dataclass(frozen=True)
class BenchInputs:
    bench: BenchSection
    teacher: TeacherConfig
    task: TaskRef  # the teacher's latency runs answer its eval prompts


def _teacher_latency(inp: BenchInputs) -> dict[str, Any] | None:
    """TTFT / E2E of the teacher answering with its context (llama.cpp teachers only)."""
    if inp.teacher.kind != "gguf":
        return None
    import time

    from edge_kto_runtime.chat import render_chat
    from edge_kto_runtime.llama_engine import LlamaEngine
    from edge_kto_runtime.stats import summarize

    from ..generate import teacher_messages
    from ..models.loader import gguf_path

    task, b = inp.task.load(), inp.bench
    path = gguf_path(inp.teacher.model)
    eng = LlamaEngine(path, n_ctx=inp.teacher.n_ctx, n_threads=inp.teacher.n_threads)  # as the teacher loads it
    bos, eos = eng.special_text()
    ttft, e2e = [], []
    try:
        for i in range(1 + b.teacher_runs):  # one warm-up
            it = task.eval[i % len(task.eval)]
            text = render_chat(
                eng.chat_template or "",
                teacher_messages(it.prompt, task.system, task.teacher_context),
                True,
                bos_token=bos,
                eos_token=eos,
            )
            ids = eng.prompt_ids(text)  # the teacher's own BOS rule
            eng.reset()
            t0 = time.perf_counter()
            times = [time.perf_counter() - t0 for _ in eng.generate_ids(ids, b.n_gen, 0.0)]
            if i >= 1 and times:
                ttft.append(times[0])
                e2e.append(time.perf_counter() - t0)
    finally:
        eng.close()
    return {"ttft_s": summarize(ttft), "e2e_s": summarize(e2e), "bytes": Path(path).stat().st_size}


def bench(inp: BenchInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    from edge_kto_runtime.bench import BenchConfig, run_bench
    from edge_kto_runtime.bench_report import markdown, plot

    b = inp.bench
    rep = run_bench(
        BenchConfig(
            bundle=str(deps["export"].dir / "bundle"),
            compare=True,
            runs=b.runs,
            warmup=b.warmup,
            n_prompt=b.n_prompt,
            n_gen=b.n_gen,
            threads=b.threads,
        ),
        progress=False,
    )
    write_atomic(d / "bench.json", json.dumps(rep, indent=2))
    write_atomic(d / "bench.md", markdown(rep))
    plot(rep, d / "bench.png")
    teacher = _teacher_latency(inp) if b.teacher else None
    return {
        "artifacts": {
            r["artifact"]: {"ttft_s": r["ttft_s"], "e2e_s": r["e2e_s"], "bytes": r["bytes"]} for r in rep["results"]
        },
        "teacher": teacher,
    }
