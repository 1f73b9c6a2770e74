"""The pipeline's stages: each reads the folders of the stages before it and writes its own.

Thin adapters from :class:`~edge_kto.pipeline.PipelineConfig` onto the stage functions
(``run_generate``, ``run_label``, ``run_train``, ``run_export``, the evaluators, the bench).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .data import read_task
from .jsonl import write_atomic, write_jsonl_atomic
from .teacher.base import SamplingParams, TeacherConfig


def _sampling(g: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**{k: g[k] for k in ("n", "temperature", "top_p", "max_new_tokens", "seed") if k in g})


def generate(cfg: Any, d: Path, split: str, g: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    from .generate import GenerateConfig, run_generate

    res = run_generate(GenerateConfig(prompts=cfg.task, out=str(d / "candidates.jsonl"), teacher=cfg.teacher,
                                      sampling=_sampling(g), split=split, limit=cfg.limit, progress=progress))
    return {"prompts": res.prompts, "written": res.written, "resumed_skipped": res.skipped, "seconds": res.seconds}


def label(cfg: Any, d: Path, gen_dir: Path, student_samples: int, progress: bool = True) -> dict[str, Any]:
    """Verifier labels for the teacher's answers, plus ``student_samples`` of the student's own per prompt."""
    from .label import LabelConfig, OnPolicyConfig, run_label

    op = None
    if student_samples > 0:
        op = OnPolicyConfig(cfg.student, SamplingParams(n=student_samples, temperature=cfg.label.get("student_temperature", 0.8),
                                                        max_new_tokens=cfg.generate.get("max_new_tokens", 128)))
    res = run_label(LabelConfig(candidates=str(gen_dir / "candidates.jsonl"), out=str(d / "kto.jsonl"), on_policy=op,
                                progress=progress))
    return res.summary


def train(cfg: Any, d: Path, label_dir: Path, resumed: bool, progress: bool = True) -> dict[str, Any]:
    from .train import TrainConfig, run_train

    run = d / "run"
    if (run / "train_report.json").is_file():  # finished before the kill that lost done.json
        return json.loads((run / "train_report.json").read_text())
    tc = TrainConfig.from_dict({**cfg.train, "data": str(label_dir / "kto.jsonl"), "model": cfg.student, "out": str(run)})
    has_ckpt = any((run / "checkpoints").glob("step-*")) if run.exists() else False
    res = run_train(tc, resume=has_ckpt, force=not has_ckpt, progress=progress)
    return res.report


def finish(cfg: Any, d: Path, train_dir: Path, label_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Quantization-aware finishing of the trained student on the training rows (never the eval split)."""
    from .finish import FinishConfig, run_finish

    fc = FinishConfig(**{**cfg.finish, "source": str(train_dir / "run"), "data": str(label_dir / "kto.jsonl"),
                         "out": str(d / "finish")})
    res = run_finish(fc, progress=progress)
    return {"model": str(res.model_dir), "steps": res.steps, "resumed_from": res.resumed_from, "final": res.final,
            "seconds": res.seconds}


def export(cfg: Any, d: Path, source_dir: Path, label_eval_dir: Path, progress: bool = True,
           finished: bool = False) -> dict[str, Any]:
    from .export import ExportConfig, run_export

    task = read_task(cfg.task)
    golden = label_eval_dir / "kto.jsonl"
    if not golden.is_file() or not golden.read_text().strip():
        golden = Path(cfg.task)
    source = source_dir / ("finish" if finished else "run")
    ec = ExportConfig(**{"golden_verifier": task.verifier, **cfg.export, "source": str(source),
                         "out": str(d / "bundle"), "golden_data": str(golden), "force": True})
    res = run_export(ec, progress=progress)
    return {"bundle": str(res.bundle), "timings": res.timings, "alignment": res.manifest.get("alignment"),
            "selection": res.manifest.get("selection"),
            "artifacts": [{k: a.get(k) for k in ("path", "quant", "bytes", "bits_per_weight")} for a in res.manifest["artifacts"]]}


def _task(cfg: Any):
    task = read_task(cfg.task)
    if cfg.limit:
        task = replace(task, eval=task.eval[:cfg.limit], train=task.train[:cfg.limit])
    return task


def _teacher_from_generate_eval(cfg: Any, gen_eval: Any, task: Any, max_new_tokens: int):
    """The teacher's greedy eval answers, when generate_eval already wrote exactly those.

    With ``generate_eval: {n: 1, temperature: 0}`` and the same token budget, generate_eval ran the
    very decode the teacher's accuracy needs; scoring its output saves the slowest model a second
    pass over the eval split. Returns None when the settings differ.
    """
    from .evaluate import score_answers
    from .jsonl import iter_jsonl

    g = cfg.generate_eval
    if g.get("n", 1) != 1 or g.get("temperature", 1.0) > 0 or g.get("max_new_tokens") != max_new_tokens:
        return None
    by_id = {row["prompt_id"]: row["completion"] for _, row in iter_jsonl(gen_eval.dir / "candidates.jsonl")}
    if any(it.id not in by_id for it in task.eval):
        return None
    return score_answers("teacher (with context)", task, [by_id[it.id] for it in task.eval], gen_eval.seconds)


def evaluate(cfg: Any, d: Path, train_dir: Path, export_dir: Path, gen_eval: Any,
             finish_dir: Path | None = None) -> dict[str, Any]:
    from edge_kto_runtime import open_bundle

    from .evaluate import eval_artifact, eval_teacher

    task, e = _task(cfg), cfg.evaluate
    mx = e.get("max_new_tokens", 128)
    results = []
    if e.get("teacher", True):
        results.append(_teacher_from_generate_eval(cfg, gen_eval, task, mx)
                       or eval_teacher("teacher (with context)", cfg.teacher, task, with_context=True, max_new_tokens=mx))
    if e.get("student_before", True):
        results.append(eval_teacher("student before", TeacherConfig(kind="hf", model=cfg.student), task, False, mx))
    results.append(eval_teacher("student after KTO (fp)", TeacherConfig(kind="hf", model=str(train_dir / "run" / "model")),
                                task, False, mx))
    if finish_dir is not None and e.get("finished", True):  # the finished weights in torch: what 4-bit should reproduce
        results.append(eval_teacher("student finished (fp32, on the 4-bit grid)",
                                    TeacherConfig(kind="hf", model=str(finish_dir / "finish" / "model")), task, False, mx))
    bundle = export_dir / "bundle"
    for art in open_bundle(bundle, verify=False).artifacts:
        results.append(eval_artifact(f"student after, {art.quant}", str(bundle), art.path, task, mx))
    write_jsonl_atomic(d / "outputs.jsonl", [{"model": r.name, **o} for r in results for o in r.outputs])
    return {"results": [r.row() for r in results]}


def _teacher_latency(cfg: Any, runs: int, warmup: int, n_gen: int) -> dict[str, Any] | None:
    """TTFT / E2E of the teacher answering with its context (llama.cpp teachers only)."""
    if cfg.teacher.kind != "gguf":
        return None
    import time

    from edge_kto_runtime.backends import physical_cores
    from edge_kto_runtime.backends.llamacpp import LlamaCppBackend
    from edge_kto_runtime.chat import render_chat
    from edge_kto_runtime.stats import summarize

    from .generate import teacher_messages
    from .models.loader import gguf_path

    task = _task(cfg)
    path = gguf_path(cfg.teacher.model)
    be = LlamaCppBackend(path, n_ctx=cfg.teacher.n_ctx, n_threads=cfg.teacher.n_threads or physical_cores())
    meta = be.llm.metadata
    template = meta.get("tokenizer.chat_template", "")
    ttft, e2e = [], []
    try:
        for i in range(warmup + runs):
            it = task.eval[i % len(task.eval)]
            text = render_chat(template, teacher_messages(it.prompt, task.system, task.teacher_context), True)
            ids = be.tokenize(text)
            be.reset()
            t0 = time.perf_counter()
            times = [time.perf_counter() - t0 for _ in be.generate_ids(ids, n_gen, 0.0)]
            if i >= warmup and times:
                ttft.append(times[0])
                e2e.append(time.perf_counter() - t0)
    finally:
        be.close()
    return {"ttft_s": summarize(ttft), "e2e_s": summarize(e2e), "bytes": Path(path).stat().st_size}


def bench(cfg: Any, d: Path, export_dir: Path) -> dict[str, Any]:
    from edge_kto_runtime.bench import BenchConfig, run_bench
    from edge_kto_runtime.bench_report import markdown, plot

    b = cfg.bench
    rep = run_bench(BenchConfig(bundle=str(export_dir / "bundle"), compare=True, runs=b.get("runs", 100),
                                warmup=b.get("warmup", 5), n_prompt=b.get("n_prompt", 128), n_gen=b.get("n_gen", 64),
                                threads=b.get("threads")), progress=False)
    write_atomic(d / "bench.json", json.dumps(rep, indent=2))
    write_atomic(d / "bench.md", markdown(rep))
    plot(rep, d / "bench.png")
    teacher = _teacher_latency(cfg, b.get("teacher_runs", 10), 1, b.get("n_gen", 64)) if b.get("teacher", True) else None
    return {"artifacts": {r["artifact"]: {"ttft_s": r["ttft_s"], "e2e_s": r["e2e_s"], "bytes": r["bytes"]} for r in rep["results"]},
            "teacher": teacher}


def _candidates_table(selection: dict[str, Any] | None, bench: dict[str, Any]) -> str:
    """Every export candidate with its gate numbers (golden set), and the shipped ones' E2E p99."""
    if not selection:
        return ""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [f"export candidates (select: {selection['mode']}; gate on the golden set):", "",
             "| candidate | quant | MB | bits/w | KLD | top-1 | hard pairs | task acc (retention) | gate | E2E p99 | shipped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in selection["candidates"]:
        lat = (bench.get("artifacts") or {}).get(c["path"])
        e2e = f"{1e3 * lat['e2e_s']['p99']:.0f} ms" if lat else "-"
        hard = f"{f(c.get('hard_pref_agree'), '.0%')} of {c['hard_pairs']}" if c.get("hard_pairs") else "-"
        lines.append(f"| {c['path']} | {c['quant']} | {c['bytes'] / 1e6:.1f} | {f(c.get('bits_per_weight'), '.2f')} | "
                     f"{f(c.get('kld_mean'), '.4f')} | {f(c.get('top1_agree'), '.1%')} | {hard} | "
                     f"{f(c.get('task_acc'), '.1%')} ({f(c.get('task_retention'), '.1%')}) | "
                     f"{'pass' if c.get('passed') else 'FAIL'} | {e2e} | {'yes' if c['selected'] else ''} |")
    return "\n".join(lines) + "\n\n"


def report(cfg: Any, runs: dict[str, Any]) -> dict[str, Any]:
    """The final table: accuracy, latency and size per model, retention, and the alignment gate."""
    ev = {r["name"]: r for r in runs["evaluate"].result["results"]}
    be = runs["bench"].result
    exp = runs["export"].result
    by_quant = {a["quant"]: a for a in exp["artifacts"]}
    paths = {a["quant"]: a["path"] for a in exp["artifacts"]}

    def lat(key: str | None) -> tuple[str, str, str]:
        x = be["teacher"] if key == "teacher" else be["artifacts"].get(key or "")
        if not x:
            return "-", "-", "-"
        t, e = x["ttft_s"], x["e2e_s"]
        size = f"{x['bytes'] / 1e6:.0f} MB" if x.get("bytes") else "-"
        return f"{1e3 * t['p50']:.0f} / {1e3 * t['p99']:.0f} ms", f"{1e3 * e['p99']:.0f} ms", size

    weights = list((runs["train"].dir / "run" / "model").glob("*.safetensors"))
    fp_size = f"{sum(w.stat().st_size for w in weights) / 1e6:.0f} MB (fp32)" if weights else "-"
    lines = ["| | accuracy (eval) | TTFT p50/p99 | E2E p99 | size |", "|---|---|---|---|---|"]
    rows = []
    for name, r in ev.items():
        key = "teacher" if name.startswith("teacher") else None
        if name.startswith("student after, "):
            key = paths.get(name[len("student after, "):])
        ttft, e2e, size = lat(key)
        if name.startswith("student") and key is None:  # the fp32 transformers model (not benchmarked: not shipped)
            size = fp_size
        shown = name
        if key and key != "teacher":  # "student after, Q4_K_M" -> "student after, GGUF Q4_K_M"
            shown = f"student after, {'GGUF' if key.endswith('.gguf') else 'ONNX'} {name[len('student after, '):]}"
        rows.append({"name": name, "label": shown, "accuracy": r["accuracy"], "correct": r["correct"], "total": r["total"],
                     "ttft": ttft, "e2e_p99": e2e, "size": size})
        lines.append(f"| {shown} | {r['accuracy']:.1%} ({r['correct']}/{r['total']}) | {ttft} | {e2e} | {size} |")
    acc = {r["name"]: r["accuracy"] for r in rows}
    teacher, fp = acc.get("teacher (with context)"), acc.get("student after KTO (fp)")
    ret = []
    if teacher and fp is not None:
        ret.append(f"student after KTO / teacher: {fp / teacher:.1%}")
    for q in by_quant:
        a = acc.get(f"student after, {q}")
        if a is not None and fp:
            ret.append(f"{q} / fp student: {a / fp:.1%}")
    align = exp.get("alignment") or {}

    def pref(v: dict[str, Any]) -> str:
        return f"{v['pref_agree']:.1%} of {v['pairs']} pairs" if v.get("pref_agree") is not None else "no pairs"

    gate = ", ".join(f"{k}: {'pass' if v['passed'] else 'FAIL'} (KLD {v['kld_mean']:.3f}, top-1 {v['top1_agree']:.1%}, "
                     f"pref {pref(v)})" for k, v in (align.get("per_artifact") or {}).items())
    cand = _candidates_table(exp.get("selection"), be)
    tr = runs["train"].result.get("final", {})
    md = (f"# {cfg.name}: distillation report\n\nteacher `{cfg.teacher.model}` ({cfg.teacher.kind}), student `{cfg.student}`, "
          f"task `{Path(cfg.task).name}`\n\n" + "\n".join(lines) + "\n\n" + ("; ".join(ret) + "\n\n" if ret else "")
          + f"alignment gate: {gate or 'not run'}\n\n" + cand + f"training: final loss {tr.get('loss', float('nan')):.4f}, "
          f"margin {tr.get('rewards/margins') or 0:.3f}, {runs['train'].result.get('steps')} steps\n\nstages: "
          + ", ".join(f"{n} {s.seconds:.0f} s{' (cached)' if s.skipped else ''}" for n, s in runs.items()) + "\n")
    return {"rows": rows, "retention": ret, "alignment": align, "train": runs["train"].result,
            "stages": {n: {"dir": str(s.dir), "cached": s.skipped, "seconds": s.seconds} for n, s in runs.items()},
            "markdown": md}
