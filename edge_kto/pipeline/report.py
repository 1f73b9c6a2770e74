"""The final report: accuracy, latency and size per model, retention, the gate, and every export candidate.

It reads the stages' results (each evaluate row says what it scored: ``kind`` and, for an
artifact, its ``artifact`` path and ``quant``), not the display names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_kto_runtime.paired import paired_table

from ..intervals import accuracy_interval, paired_difference
from ..jsonl import iter_jsonl
from ..label import STUDENT_SOURCES, teacher_best_of_n
from ..run_folder import RunFolder


def _verdicts(evaluate_dir: Path) -> dict[str, list[bool]]:
    """Per model (evaluate's display name), its per-question verdicts in eval order."""
    out: dict[str, list[bool]] = {}
    path = evaluate_dir / "outputs.jsonl"
    if path.is_file():
        for _, o in iter_jsonl(path):
            out.setdefault(o["model"], []).append(bool(o["correct"]))
    return out


def _vs_teacher_line(ev: list[dict[str, Any]], verdicts: dict[str, list[bool]]) -> str:
    """Each student's paired accuracy difference from the teacher's greedy answers, 95% interval."""
    teacher = next((verdicts.get(r["name"]) for r in ev if r.get("kind") == "teacher"), None)
    if not teacher:
        return ""
    parts = []
    for r in ev:
        mine = verdicts.get(r["name"])
        if r.get("kind") in ("student_fp", "student_finished", "artifact") and mine and len(mine) == len(teacher):
            mean, lo, hi = paired_difference([mine], [teacher])
            parts.append(f"{r['name']} {mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
    return (
        ("vs the teacher's greedy answers (points, 95% CI over questions): " + "; ".join(parts) + "\n\n")
        if parts
        else ""
    )


def _candidates_table(selection: dict[str, Any] | None, bench: dict[str, Any]) -> str:
    """Every export candidate with its gate numbers (golden set), and the shipped ones' E2E p99."""
    if not selection:
        return ""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        f"export candidates (select: {selection['mode']}; gate on the golden set):",
        "",
        "| candidate | quant | MB | bits/w | KLD | KLD vs fp student | top-1 | hard pairs | task acc (retention) | "
        "gate | E2E p99 | shipped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in selection["candidates"]:
        lat = (bench.get("artifacts") or {}).get(c["path"])
        e2e = f"{1e3 * lat['e2e_s']['p99']:.0f} ms" if lat else "-"
        hard = f"{f(c.get('hard_pref_agree'), '.0%')} of {c['hard_pairs']}" if c.get("hard_pairs") else "-"
        lines.append(
            f"| {c['path']} | {c['quant']} | {c['bytes'] / 1e6:.1f} | {f(c.get('bits_per_weight'), '.2f')} | "
            f"{f(c.get('kld_mean'), '.4f')} | {f(c.get('kld_student_mean'), '.4f')} | "
            f"{f(c.get('top1_agree'), '.1%')} | {hard} | "
            f"{f(c.get('task_acc'), '.1%')} ({f(c.get('task_retention'), '.1%')}) | "
            f"{_gate_word(c)} | {e2e} | {'yes' if c['selected'] else ''} |"
        )
    paired = paired_table([{"artifact": c["path"], **c} for c in selection["candidates"]])
    return "\n".join(lines) + "\n" + paired + "\n"


def _gate_word(c: dict[str, Any]) -> str:
    if c.get("passed"):
        return "pass"
    return "inconclusive" if c.get("task_verdict") == "inconclusive" else "FAIL"


def _rounds_line(runs: dict[str, Any]) -> str:
    """What each on-policy round trained on: the student's own rows and the teacher's, by label."""
    parts = []
    for name, run in runs.items():
        if not name.startswith("round"):
            continue
        src = (run.result.get("label") or {}).get("by_source", {})
        mine = [v for k, v in src.items() if k in STUDENT_SOURCES]  # sampled in torch, or the device's thumbs
        own = {c: sum(v[c] for v in mine) for c in ("desirable", "undesirable")}
        teacher = [v for k, v in src.items() if k not in STUDENT_SOURCES]
        t_d, t_u = sum(v["desirable"] for v in teacher), sum(v["undesirable"] for v in teacher)
        fin = run.result.get("final", {})
        parts.append(
            f"{name}: student's own {own['desirable']} desirable / {own['undesirable']} undesirable + teacher "
            f"{t_d} / {t_u}, {run.result.get('steps')} steps, final loss {fin.get('loss', float('nan')):.4f}"
        )
    return ("on-policy rounds (reference = the round before): " + "; ".join(parts) + "\n\n") if parts else ""


def _data_lines(runs: dict[str, Any]) -> list[str]:
    """What the training data held: augmented phrasings and the teacher's coverage, when they were on."""
    out = []
    aug = runs["augment"].result if "augment" in runs else None
    if aug:
        out.append(
            f"augment: {aug['kept']} new phrasings of {aug['sources']} training prompts "
            f"({aug['refused_eval_near_duplicates']} refused as near an eval prompt, "
            f"{aug['refused_duplicates']} as duplicates)"
        )
    lab = runs["label"].result if "label" in runs else None
    derived = (lab or {}).get("by_source", {})
    if "shared" in derived or "confusion" in derived:
        shared, neg = derived.get("shared", {}).get("desirable", 0), derived.get("confusion", {}).get("undesirable", 0)
        out.append(
            f"training rows: {lab['rows']} for {lab['prompts']} prompts, {lab['desirable']} desirable ({shared} "
            f"shared within an intent), {lab['undesirable']} undesirable ({neg} confusion negatives)"
        )
    cov = runs["generate"].result.get("coverage") if "generate" in runs else None
    if cov and cov.get("samples"):
        out.append(
            f"teacher coverage: {cov['covered']}/{cov['prompts']} training prompts with a passing answer "
            f"({cov['covered_unguided']} without reference guidance; {cov['samples']} samples)"
        )
    return out


def report(cfg: Any, runs: dict[str, Any]) -> dict[str, Any]:
    """The final table: accuracy, latency and size per model, retention, and the alignment gate."""
    ev = runs["evaluate"].result["results"]
    be = runs["bench"].result
    exp = runs["export"].result
    by_quant = {a["quant"]: a for a in exp["artifacts"]}

    def lat(x: dict[str, Any] | None) -> tuple[str, str, str]:
        if not x:
            return "-", "-", "-"
        t, e = x["ttft_s"], x["e2e_s"]
        size = f"{x['bytes'] / 1e6:.0f} MB" if x.get("bytes") else "-"
        return f"{1e3 * t['p50']:.0f} / {1e3 * t['p99']:.0f} ms", f"{1e3 * e['p99']:.0f} ms", size

    weights = list(RunFolder(runs["train"].dir / "run").model.glob("*.safetensors"))
    fp_size = f"{sum(w.stat().st_size for w in weights) / 1e6:.0f} MB (fp32)" if weights else "-"
    verdicts = _verdicts(runs["evaluate"].dir)
    lines = [
        "| | accuracy (eval) [95% CI] | confused | TTFT p50/p99 | E2E p99 | size |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for r in ev:
        kind, name, shown = r.get("kind"), r["name"], r["name"]
        if kind == "teacher":
            ttft, e2e, size = lat(be.get("teacher"))
        elif kind == "artifact":
            ttft, e2e, size = lat(be["artifacts"].get(r["artifact"]))
            fmt = "GGUF" if r["backend"] == "llama.cpp" else "ONNX"
            shown = f"student after, {fmt} {r['quant']}"  # "student after, Q4_K_M" -> "student after, GGUF Q4_K_M"
        else:  # the fp32 transformers models (not benchmarked: not shipped)
            ttft, e2e, size = "-", "-", fp_size
        ci, bounds = "", None
        if verdicts.get(name):
            _, lo, hi = accuracy_interval(verdicts[name])
            ci, bounds = f" [{lo:.1%}, {hi:.1%}]", [lo, hi]
        rows.append(
            {
                "name": name,
                "kind": kind,
                "label": shown,
                "accuracy": r["accuracy"],
                "correct": r["correct"],
                "total": r["total"],
                "ci95": bounds,  # bootstrap over questions
                "confusion_rate": r.get("confusion_rate"),  # wrong, with another intent's facts
                "ttft": ttft,
                "e2e_p99": e2e,
                "size": size,
            }
        )
        conf = f"{r['confusion_rate']:.1%} ({r['confused']})" if r.get("confusion_rate") is not None else "-"
        lines.append(
            f"| {shown} | {r['accuracy']:.1%} ({r['correct']}/{r['total']}){ci} | {conf} | {ttft} | {e2e} | {size} |"
        )
    acc = {r["kind"]: r["accuracy"] for r in ev if r.get("kind") != "artifact"}
    teacher, fp = acc.get("teacher"), acc.get("student_fp")
    ret = []
    if teacher and fp is not None:
        ret.append(f"student after KTO / teacher: {fp / teacher:.1%}")
    for r in ev:
        if r.get("kind") == "artifact" and r["quant"] in by_quant and fp:
            ret.append(f"{r['quant']} / fp student: {r['accuracy'] / fp:.1%}")
    align = exp.get("alignment") or {}

    def pref(v: dict[str, Any]) -> str:
        return f"{v['pref_agree']:.1%} of {v['pairs']} pairs" if v.get("pref_agree") is not None else "no pairs"

    def drift(v: dict[str, Any]) -> str:  # a finished student: KL to its own weights, and to the fp student
        if v.get("kl_reference") != "finished" or v.get("kld_student_mean") is None:
            return ""
        return f" vs the finished weights, {v['kld_student_mean']:.3f} vs the fp student"

    def task(v: dict[str, Any]) -> str:  # the paired verdict: prompts lost / gained against the stored weights
        p = v.get("paired_exported") or v.get("paired_student")
        if not p:
            return ""
        lo, hi = p["interval"]
        return f"task {v['task_verdict']}: {p['lost']} lost, {p['gained']} gained of {p['n']} [{lo:+.1%}, {hi:+.1%}]; "

    gate = ", ".join(
        f"{k}: {_gate_word(v)} ({task(v)}KLD {v['kld_mean']:.3f}{drift(v)}, "
        f"top-1 {v['top1_agree']:.1%}, pref {pref(v)})"
        for k, v in (align.get("per_artifact") or {}).items()
    )
    best = teacher_best_of_n(runs["label"].dir / "kto.jsonl") if "label" in runs else None
    if best:
        ret.append(
            f"teacher best-of-n on the training prompts (any accepted sample): "
            f"{best[0] / best[1]:.1%} ({best[0]}/{best[1]})"
        )
    ret += _data_lines(runs)
    cand = _candidates_table(exp.get("selection"), be)
    rounds = _rounds_line(runs)
    tr = runs["train"].result.get("final", {})
    md = (
        f"# {cfg.name}: distillation report\n\nteacher `{cfg.teacher.model}` ({cfg.teacher.kind}), student "
        f"`{cfg.student}`, "
        f"task `{Path(cfg.task).name}`\n\n"
        + "\n".join(lines)
        + "\n\n"
        + ("; ".join(ret) + "\n\n" if ret else "")
        + _vs_teacher_line(ev, verdicts)
        + f"alignment gate: {gate or 'not run'}\n\n"
        + cand
        + f"training: final loss {tr.get('loss', float('nan')):.4f}, "
        f"margin {tr.get('rewards/margins') or 0:.3f}, {runs['train'].result.get('steps')} steps\n\n"
        + rounds
        + "stages: "
        + ", ".join(f"{n} {s.seconds:.0f} s{' (cached)' if s.skipped else ''}" for n, s in runs.items())
        + "\n"
    )
    return {
        "rows": rows,
        "retention": ret,
        "alignment": align,
        "train": runs["train"].result,
        "stages": {n: {"dir": str(s.dir), "cached": s.skipped, "seconds": s.seconds} for n, s in runs.items()},
        "markdown": md,
    }
