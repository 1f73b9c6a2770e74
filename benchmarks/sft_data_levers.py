"""Which training data lifts held-out accuracy: the SFT warm start alone on each data recipe, seeds
paired per question against the first recipe.

    python benchmarks/sft_data_levers.py --candidates runs/demo/stages/generate-<key>/candidates.jsonl \
        --variants own,shared:4 --seeds 0,1,2
    python benchmarks/sft_data_levers.py --candidates ... --phrasings runs/demo/stages/augment-<key>/prompts.jsonl \
        --variants own,shared:4,shared:2+aug:4
    python benchmarks/sft_data_levers.py --quick ...   # 10 steps, 20 eval questions: checks the script

Why SFT alone: it is where the student learns the facts (the pipeline's KTO then adjusts a few dozen
steps), it is the costly part on a CPU, and it isolates the data. Each variant is a set of desirable
rows built the way the label stage builds them (``edge_kto.label.shared``), trained with the pipeline's
own SFT warm start (``edge_kto.train.sft``; LoRA, the pipeline file's ``sft_steps``/``sft_lr``), and
scored by greedy answers to every eval question with the task's verifier and the confusion rule.

Variants: ``own`` (each training prompt's own accepted teacher answers: today's SFT data),
``shared:k`` (+ the intent's answers up to k per prompt), ``shared:k+aug:m`` (+ the first m new
phrasings per training prompt from ``--phrasings``, answered with shared answers).
Prints a table and writes JSON to ``benchmarks/results/sft_data_levers_<task>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def labelled_rows(candidates: Path, verifier: str) -> list[dict[str, Any]]:
    """The candidates labelled by the label stage itself (``run_label``: the task's verifier, deduplicated)."""
    import tempfile

    from edge_kto.label import LabelConfig, run_label

    with tempfile.TemporaryDirectory() as d:
        out = run_label(LabelConfig(str(candidates), out=str(Path(d) / "kto.jsonl"), verifier=verifier, progress=False))
        return [json.loads(x) for x in out.out.read_text().splitlines()]


def variant_rows(spec: str, rows: list[dict], phrasings: list[dict], verifier: str) -> list[dict]:
    """The desirable rows of one variant (see the module docstring)."""
    from edge_kto.label.shared import phrasing_rows, shared_positives
    from edge_kto_runtime.verifiers import get_verifier

    verify = get_verifier(verifier)
    good = [r for r in rows if r["label"]]
    if spec == "own":
        return good
    parts = dict(p.split(":") for p in spec.split("+"))
    k, m = int(parts["shared"]), int(parts.get("aug", 0))
    extra = []
    if m:
        if not phrasings:
            raise SystemExit(f"variant {spec!r} needs --phrasings (an augment stage's prompts.jsonl)")
        extra = phrasing_rows(rows, [p for p in phrasings if int(p["id"].rsplit("~p", 1)[1]) < m])
    return good + shared_positives(rows, k, lambda r: bool(verify(r["completion"], r.get("reference"))), extra)


def train_and_score(rows: list[dict], task: Any, student: str, steps: int, lr: float, seed: int, run_dir: Path,
                    limit: int | None) -> tuple[list[dict], float]:  # fmt: skip
    """SFT warm start on ``rows`` (the pipeline's), then greedy answers to the eval split, scored."""
    import torch
    from accelerate import Accelerator

    from edge_kto.data import KTOExample, to_messages
    from edge_kto.evaluate import score_answers
    from edge_kto.models.greedy import greedy_decode
    from edge_kto.models.loader import load_model
    from edge_kto.train.config import LoraConfig, TrainConfig
    from edge_kto.train.sft import sft_warm_start
    from edge_kto.train.tokenize import tokenize_all

    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(sft_steps=steps, sft_lr=lr, seed=seed, lora=LoraConfig(r=16, alpha=32), max_length=384)
    model, tok = load_model(student, dtype=torch.float32)
    examples = [KTOExample(r["prompt"], r["completion"], True, r.get("id")) for r in rows]
    tokenized = tokenize_all(tok, examples, cfg.max_length, cfg.max_prompt_length).examples
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    t0 = time.perf_counter()
    model = sft_warm_start(model, tokenized, cfg, Accelerator(cpu=True), run_dir, pad, progress=True)
    seconds = time.perf_counter() - t0
    model.eval()
    items = task.eval[:limit] if limit else task.eval
    prompts = []
    for it in items:
        ids = tok.apply_chat_template(to_messages(it.prompt, task.system), add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    outs = greedy_decode(model, prompts, 96, pad, {tok.eos_token_id}, desc="eval answers")
    answers = [tok.decode(o, skip_special_tokens=True) for o in outs]
    scored = score_answers("sft", dataclasses.replace(task, eval=items), answers, 0.0)
    return scored.outputs, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default=str(ROOT / "edge_kto" / "tasks" / "brightnest_support"))
    ap.add_argument("--candidates", required=True, help="a generate stage's candidates.jsonl (training split)")
    ap.add_argument("--phrasings", help="an augment stage's prompts.jsonl (for aug: variants)")
    ap.add_argument("--variants", default="own,shared:4")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=150, help="SFT steps (demo.yaml: 150)")
    ap.add_argument("--lr", type=float, default=1e-3, help="SFT learning rate (demo.yaml: 0.001)")
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "sft_data_levers"))
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true", help="10 steps, 20 eval questions: checks the script")
    a = ap.parse_args()

    from edge_kto.data import read_task
    from edge_kto.intervals import accuracy_interval, paired_difference

    task = read_task(a.task)
    steps, limit = (10, 20) if a.quick else (a.steps, None)
    rows = labelled_rows(Path(a.candidates), task.verifier)
    phrasings = [json.loads(x) for x in Path(a.phrasings).read_text().splitlines()] if a.phrasings else []
    seeds = [int(s) for s in a.seeds.split(",")]
    report: dict[str, Any] = {"task": task.name, "candidates": a.candidates, "steps": steps, "lr": a.lr,
                              "seeds": seeds, "variants": {}}  # fmt: skip
    for spec in a.variants.split(","):
        data = variant_rows(spec, rows, phrasings, task.verifier)
        runs = []
        for seed in seeds:
            run_dir = Path(a.runs) / task.name / f"{spec.replace(':', '')}-s{seed}-{steps}"
            cached = run_dir / "outputs.json"
            if cached.is_file():
                runs.append(json.loads(cached.read_text()))
                continue
            outputs, seconds = train_and_score(data, task, a.student, steps, a.lr, seed, run_dir, limit)
            run = {"seed": seed, "sft_seconds": round(seconds, 1), "outputs": outputs}
            cached.write_text(json.dumps(run))
            runs.append(run)
        correct = [[o["correct"] for o in r["outputs"]] for r in runs]
        confused = [sum(bool(o.get("confused_with")) for o in r["outputs"]) / len(r["outputs"]) for r in runs]
        report["variants"][spec] = {
            "rows": len(data),
            "prompts": len({r["prompt_id"] for r in data}),
            "accuracy": [sum(c) / len(c) for c in correct],
            "confusion_rate": confused,
            "sft_seconds": [r["sft_seconds"] for r in runs],
            "correct": correct,
        }
    base_spec = next(iter(report["variants"]))
    base = report["variants"][base_spec]["correct"]
    lines = [f"| variant | rows | prompts | accuracy (mean of {len(seeds)}) | 95% CI | vs {base_spec} (points) | "
             "confused | SFT s |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for spec, v in report["variants"].items():
        pooled = [c for seed in v["correct"] for c in seed]
        acc, lo, hi = accuracy_interval(pooled)
        d, dlo, dhi = paired_difference(v["correct"], base)
        v["vs_first"] = [round(d, 2), round(dlo, 2), round(dhi, 2)]
        lines.append(
            f"| {spec} | {v['rows']} | {v['prompts']} | {acc:.1%} | [{lo:.1%}, {hi:.1%}] | "
            f"{d:+.1f} [{dlo:+.1f}, {dhi:+.1f}] | {sum(v['confusion_rate']) / len(seeds):.1%} | "
            f"{sum(v['sft_seconds']) / len(seeds):.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    report["table"] = table
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"sft_data_levers_{task.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
