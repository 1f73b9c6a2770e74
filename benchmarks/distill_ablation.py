"""What KTO adds, with intervals: SFT-only, SFT + KTO on the teacher's labels, + 1 and 2 on-policy
rounds, KTO-only -- each over several seeds, fp accuracy on the task's eval split.

    python benchmarks/distill_ablation.py --pipeline edge_kto/pipelines/demo.yaml --seeds 0,1,2
    python benchmarks/distill_ablation.py --pipeline edge_kto/pipelines/demo.yaml \
        --task edge_kto/tasks/voltride_support --seeds 0,1,2
    python benchmarks/distill_ablation.py --methods sft,sft_kto --variant apo:loss_type=apo_zero_unpaired \
        --variant beta05:beta=0.5 --seeds 0,1,2   # other KTO settings on each seed's own SFT model
    python benchmarks/distill_ablation.py --methods sft,sft_kto,sft_kto_r1 \
        --round teacher_fraction=0             # rounds on the student's own answers only
    python benchmarks/distill_ablation.py --quick      # CI: the tiny student on capitals, 2 seeds

The stages are the pipeline's own, in ``OUT`` (default ``runs/ablation-<task>``): generation and
labels run once and are shared by every method and seed (same stage keys); per seed, ``train`` is
SFT then KTO (its SFT adapter alone is the SFT-only model: the same SFT run, so the SFT-only vs
SFT+KTO comparison is paired), ``round1`` / ``round2`` continue from it on the student's own
labelled answers, and a second ``train`` with ``sft_steps: 0`` is KTO-only; each ``--variant`` is one
more ``train`` with other KTO settings on the seed's SFT adapter (``sft_from``: not trained again, so it
pairs with SFT-only as well). Only the methods asked for are trained. Everything is cached and
resumable like the pipeline (rerun the command after a kill).

Reported: accuracy per method, mean and sd over seeds; for each method against SFT-only, the mean
paired difference (points) with a 95% bootstrap interval over questions (per question the
difference averaged over seeds, 10,000 resamples), and the same against the teacher's greedy answers;
the teacher's best-of-n on the training prompts; the last KTO step's z0 (``kl``) and its value
before the clamp at 0 (``kl_raw``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("sft", "sft_kto", "sft_kto_r1", "sft_kto_r2", "kto")
LABELS = {
    "sft": "SFT only",
    "sft_kto": "SFT + KTO (teacher labels)",
    "sft_kto_r1": "SFT + KTO + 1 on-policy round",
    "sft_kto_r2": "SFT + KTO + 2 on-policy rounds",
    "kto": "KTO only (no SFT)",
}


def _stages(cfg: Any, progress: bool) -> dict[str, Any]:
    """The pipeline's stages up to training and the eval answers (cached by key in ``cfg.out``); the
    ablation compares fp students only, so nothing is finished, exported or benched."""
    from edge_kto.pipeline.runner import run_through

    rounds = {f"round{k}" for k in range(1, cfg.rounds.count + 1)}
    return run_through(cfg, {"train", "generate_eval", *rounds}, progress)


def _sft_only(run_dir: Path, base_model: str) -> Path:
    """The SFT warm start of a training run on its own: base + its ``sft_adapter``, merged (cached)."""
    out = run_dir.parent / "sft_only"
    if not (out / "config.json").is_file():
        from edge_kto.export.recipe import merge_adapter  # the export's own merge: fp32 base + LoRA

        tmp = out.with_name("sft_only.tmp")
        merge_adapter(base_model, run_dir / "sft_adapter", tmp)
        tmp.rename(out)
    return out


def _kl_at_end(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1] if rows else {}
    return {"kl": last.get("kl"), "kl_raw": last.get("kl_raw"), "steps": last.get("step")}


def _accuracy(model_dir: Path, task: Any, max_new_tokens: int) -> list[bool]:
    """Per eval question: does the fp model's greedy answer pass the task's verifier (cached next to it)."""
    from edge_kto.evaluate import eval_teacher
    from edge_kto.teacher.base import TeacherConfig

    cache = model_dir.parent / f"eval_{max_new_tokens}.json"
    ids = [it.id for it in task.eval]
    if cache.is_file() and json.loads(cache.read_text())["ids"] == ids:
        return json.loads(cache.read_text())["correct"]
    r = eval_teacher(model_dir.name, TeacherConfig(kind="hf", model=str(model_dir)), task, False, max_new_tokens)
    correct = [o["correct"] for o in r.outputs]
    cache.write_text(json.dumps({"ids": ids, "correct": correct}))
    return correct


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` -> (NAME, {key: value}); values read as YAML scalars."""
    import yaml

    from edge_kto.train import TrainConfig

    name, _, body = spec.partition(":")
    over = {}
    for item in filter(None, body.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"--variant {spec!r}: expected NAME:key=value,... with TrainConfig keys, got {item!r}")
        over[key.strip()] = yaml.safe_load(value)
    if not name or not over:
        raise SystemExit(f"--variant {spec!r}: expected NAME:key=value,...")
    return name, over


def parse_round(spec: str) -> tuple[str, Any]:
    """``key=value`` -> a ``rounds:`` setting (a :class:`RoundsSection` field), value read as a YAML scalar."""
    import yaml

    from edge_kto.pipeline.rounds import RoundsSection

    key, eq, value = spec.partition("=")
    if not eq or key.strip() not in RoundsSection.__dataclass_fields__:
        keys = ", ".join(RoundsSection.__dataclass_fields__)
        raise SystemExit(f"--round {spec!r}: expected key=value with a rounds key ({keys})")
    return key.strip(), yaml.safe_load(value)


def run_seed(
    base: Any, seed: int, methods: list[str], variants: dict[str, dict[str, Any]], progress: bool
) -> dict[str, Any]:
    """The students of one seed that ``methods`` name: {method: (model folder, training run or None)}.

    A variant is KTO with other training settings on *this seed's* SFT model (``sft_from``: the SFT
    warm start is not trained again), so it is paired with SFT-only and SFT + KTO like they are."""
    from edge_kto.run_folder import RunFolder

    cfg = copy.deepcopy(base)
    cfg.train.seed = seed
    cfg.rounds.count = 2 if "sft_kto_r2" in methods else 1 if "sft_kto_r1" in methods else 0
    runs = _stages(cfg, progress)
    train = runs["train"].dir / "run"
    out = {"sft": (_sft_only(train, cfg.student), None), "sft_kto": (RunFolder(train).model, train)}
    for k in range(1, cfg.rounds.count + 1):
        out[f"sft_kto_r{k}"] = (RunFolder(runs[f"round{k}"].dir / "run").model, runs[f"round{k}"].dir / "run")
    for name, over in variants.items():
        v = copy.deepcopy(cfg)
        v.rounds.count = 0
        for key, value in over.items():
            setattr(v.train, key, value)
        v.train.sft_steps, v.train.sft_from = 0, str(train / "sft_adapter")
        run = _stages(v, progress)["train"].dir / "run"
        out[name] = (RunFolder(run).model, run)
    if "kto" in methods:
        kto = copy.deepcopy(cfg)
        kto.train.sft_steps, kto.rounds.count = 0, 0
        run = _stages(kto, progress)["train"].dir / "run"
        out["kto"] = (RunFolder(run).model, run)
    return out


def teacher_greedy(cfg: Any, task: Any, progress: bool) -> dict[str, Any] | None:
    """The teacher's greedy accuracy on the same questions (generate_eval's answers when they are greedy)."""
    from edge_kto.pipeline import stages
    from edge_kto.pipeline.runner import run_through

    runs = run_through(cfg, {"generate_eval"}, progress)
    mx = cfg.evaluate.max_new_tokens
    res = stages._teacher_from_generate_eval(runs["generate_eval"], cfg.generate_eval, task, mx)
    return None if res is None else {"correct": [o["correct"] for o in res.outputs], "accuracy": res.accuracy}


def best_of_n(cfg: Any, progress: bool) -> dict[str, Any] | None:
    """The teacher's best-of-n on the training prompts (any of its ``generate.n`` samples accepted)."""
    from edge_kto.label import teacher_best_of_n
    from edge_kto.pipeline.runner import run_through

    runs = run_through(cfg, {"label"}, progress)  # cached by then; nothing is trained for this
    got = teacher_best_of_n(runs["label"].dir / "kto.jsonl")
    return None if got is None else {"prompts_ok": got[0], "prompts": got[1], "n": cfg.generate.n}


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"task `{rep['task']}`, {rep['questions']} eval questions, seeds {rep['seeds']}",
        "",
        "| method | accuracy per seed | mean ± sd | vs SFT only (points, 95% CI) | vs teacher greedy | "
        "last KTO step: z0 / before clamp |",
        "|---|---|---|---|---|---|",
    ]
    for m in rep["methods"]:
        r = rep["results"][m]
        diff, vs_t = (_diff(r.get(k)) for k in ("vs_sft", "vs_teacher"))
        kl = r.get("kl_end") or []
        kls = ", ".join(
            f"{k['kl']:.3f} / {k['kl_raw']:.3f}" for k in kl if k.get("kl") is not None and k.get("kl_raw") is not None
        )
        lines.append(
            f"| {LABELS[m]} | {', '.join(f'{a:.1%}' for a in r['accuracy'])} | {r['mean']:.1%} ± {r['sd']:.1%} | "
            f"{diff} | {vs_t} | {kls or '-'} |"
        )
    if rep.get("teacher"):
        lines.append(f"| teacher (greedy, with context) | {rep['teacher']['accuracy']:.1%} | - | - | - | - |")
    b = rep.get("teacher_best_of_n")
    if b:
        lines.append(
            f"| teacher best-of-{b['n']} on the training prompts (any accepted) | "
            f"{b['prompts_ok'] / b['prompts']:.1%} ({b['prompts_ok']}/{b['prompts']}) | - | - | - | - |"
        )
    return "\n".join(lines)


def _diff(d: dict[str, Any] | None) -> str:
    return "-" if d is None else f"{d['mean']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def run(a: argparse.Namespace) -> dict[str, Any]:
    from edge_kto.intervals import paired_difference
    from edge_kto.pipeline import PipelineConfig
    from edge_kto.pipeline.runner import task_fingerprint
    from edge_kto.pipeline.stages import TaskRef

    cfg = PipelineConfig.from_yaml(a.pipeline)
    if a.task:
        cfg.task = a.task
    if a.student:
        cfg.student = a.student
    cfg.out = a.runs or str(ROOT / "runs" / f"ablation-{Path(cfg.task).name}")
    for k, v in (a.rounds or {}).items():
        setattr(cfg.rounds, k, v)
    cfg.rounds.validate()
    for k, v in (a.train or {}).items():
        setattr(cfg.train, k, v)
    variants = dict(parse_variant(s) for s in a.variant or [])
    methods = [m for m in a.methods.split(",") if m] + list(variants)
    for name, over in variants.items():
        LABELS[name] = "SFT + KTO (" + ", ".join(f"{k}={v}" for k, v in over.items()) + ")"
    if "sft" in methods and not cfg.train.sft_steps:
        raise SystemExit(f"{a.pipeline}: train.sft_steps is 0, so no SFT-only model exists; drop 'sft' from --methods")
    task = TaskRef(cfg.task, task_fingerprint(cfg.task), cfg.limit).load()
    seeds = [int(s) for s in a.seeds.split(",")]
    mx = cfg.evaluate.max_new_tokens
    t0 = time.perf_counter()
    correct: dict[str, list[list[bool]]] = {m: [] for m in methods}
    kl_end: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        students = run_seed(cfg, seed, methods, variants, a.progress)
        for m in methods:
            model, train_run = students[m]
            correct[m].append(_accuracy(Path(model), task, mx))
            if train_run is not None:
                kl_end[m].append(_kl_at_end(Path(train_run)))
    teacher = teacher_greedy(cfg, task, a.progress)
    results: dict[str, Any] = {}
    for m in methods:
        accs = [sum(c) / len(c) for c in correct[m]]
        r = {"accuracy": accs, "mean": statistics.mean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        if m != "sft" and "sft" in correct:
            mean, lo, hi = paired_difference(correct[m], correct["sft"])
            r["vs_sft"] = {"mean": mean, "lo": lo, "hi": hi, "excludes_zero": lo > 0 or hi < 0}
        if teacher:
            mean, lo, hi = paired_difference(correct[m], [teacher["correct"]] * len(seeds))
            r["vs_teacher"] = {"mean": mean, "lo": lo, "hi": hi, "excludes_zero": lo > 0 or hi < 0}
        r["kl_end"], r["correct"] = kl_end[m], correct[m]
        results[m] = r
    return {
        "task": Path(cfg.task).name,
        "pipeline": str(a.pipeline),
        "questions": len(task.eval),
        "seeds": seeds,
        "methods": methods,
        "variants": variants,
        "rounds": {
            k: getattr(cfg.rounds, k)
            for k in ("samples", "temperature", "teacher_fraction", "epochs", "lr", "nll_weight")
        },
        "results": results,
        "teacher": teacher,
        "teacher_best_of_n": best_of_n(cfg, a.progress),
        "seconds": time.perf_counter() - t0,
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=str(ROOT / "edge_kto" / "pipelines" / "demo.yaml"))
    ap.add_argument("--task", help="another task folder (the same pipeline file)")
    ap.add_argument("--student", help="override the pipeline's student")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--variant",
        action="append",
        help="NAME:key=value,... another KTO setting on each seed's SFT model, e.g. apo:loss_type=apo_zero_unpaired",
    )
    ap.add_argument(
        "--round", action="append", help="key=value: a rounds setting of the on-policy methods, e.g. teacher_fraction=0"
    )
    ap.add_argument("--runs", help="stage folder (default runs/ablation-<task>)")
    ap.add_argument("--out", help="JSON (default benchmarks/results/distill_ablation_<task>.json)")
    ap.add_argument("--quick", action="store_true", help="CI: quick.yaml's capitals task, a tiny student, 2 seeds")
    ap.add_argument("--quiet", dest="progress", action="store_false")
    a = ap.parse_args()
    a.rounds = dict(parse_round(s) for s in a.round or [])
    a.train = None
    if a.quick:
        from transformers import AutoTokenizer

        from edge_kto.models import fetch_model, make_tiny_llama

        a.pipeline = str(ROOT / "edge_kto" / "pipelines" / "quick.yaml")
        a.seeds = "0,1"
        a.runs = a.runs or str(ROOT / "runs" / "ablation-quick")
        student = Path(a.runs) / "tiny-student"
        if not (student / "config.json").is_file():
            tok = AutoTokenizer.from_pretrained(fetch_model("smollm2-135m-instruct", progress=False).hf_dir)
            make_tiny_llama(str(student), tok)
        a.student = str(student)
        # the tiny random student's answers are all wrong: the teacher's rows give its rounds both labels
        a.rounds = {"samples": 1, "max_steps": 2, "teacher_fraction": 1.0, **a.rounds}
        a.train = {"sft_steps": 2}
    rep = run(a)
    md = markdown(rep)
    print(md)
    name = f"distill_ablation_{rep['task']}{'_quick' if a.quick else ''}.json"
    out = Path(a.out or ROOT / "benchmarks" / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**rep, "markdown": md}, indent=2))
    print(f"\n{out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
