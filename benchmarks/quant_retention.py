"""4-bit task retention of a trained student, per method: what each quantization recipe keeps of
what training taught, on the same golden set and scorer (the export's alignment gate).

    plain PTQ          the fp student quantized as it is: F16, Q8_0, Q4_0, Q4_K_M, Q5_K_M, IQ4_NL; ONNX int4
    imatrix+overrides  importance matrix from the training rows (never eval), per-tensor types
    finishing          quantization-aware finishing on the Q4_0 grid (edge-kto finish), then exact Q4_0 / ONNX int4

For every artifact: size, bits/weight, KLD vs fp, top-1, hard-pair agreement (accepted answer vs
its near miss), task accuracy on the golden prompts and retention vs the fp student, and the
extra wall time the method costs (importance matrix, finishing) on this machine.

    python benchmarks/quant_retention.py --run RUN --data TRAIN_KTO --golden EVAL_KTO [--finished FINISH_DIR]
    python benchmarks/quant_retention.py --quick      # tiny random model, every code path (CI)

With the demo pipeline, RUN is runs/demo/stages/train-*/run, TRAIN_KTO runs/demo/stages/label-*/kto.jsonl,
EVAL_KTO runs/demo/stages/label_eval-*/kto.jsonl, FINISH_DIR runs/demo/stages/finish-*/finish.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_kto.export import ExportConfig, run_export
from edge_kto.finish import FinishConfig, run_finish

PLAIN = {
    "gguf": ["F16", "Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "IQ4_NL"],
    "onnx": [{"accuracy_level": 4}, {"accuracy_level": 1}],
}
CALIBRATED = {
    "imatrix": "auto",
    "onnx": False,
    "gguf": [
        {"type": "Q4_0", "imatrix": True},
        {"type": "IQ4_NL", "imatrix": True},
        {"type": "Q4_K_M", "imatrix": True},
        {"type": "Q5_K_M", "imatrix": True},
        {
            "type": "IQ4_NL",
            "imatrix": True,
            "tensor_types": {"ffn_down": "Q6_K", "attn_[kv]": "Q8_0"},
            "name": "model-iq4_nl-recipe-a",
        },
    ],
}
FINISHED = {"gguf": ["Q4_0"], "onnx": [{"accuracy_level": 4}, {"accuracy_level": 1}]}


def _rows(method: str, res: Any, extra_s: float) -> list[dict[str, Any]]:
    arts = {a["path"]: a for a in res.manifest["artifacts"]}
    out = []
    for r in res.alignment.results:
        a = arts[r["artifact"]]
        out.append(
            {
                "method": method,
                "artifact": r["artifact"],
                "quant": r["quant"],
                "mb": a["bytes"] / 1e6,
                "bits_per_weight": a.get("bits_per_weight"),
                "kld_mean": r["kld_mean"],  # a finished student: vs its own (finished) fp weights
                "kld_student_mean": r.get("kld_student_mean"),  # vs the fp student: comparable across methods
                "top1_agree": r["top1_agree"],
                "hard_pref_agree": r.get("hard_pref_agree"),
                "hard_pairs": r.get("hard_pairs"),
                "task_acc": r["task_acc"],
                "task_acc_fp": r["task_acc_fp"],
                "task_retention": r["task_retention"],
                "task_verdict": r.get("task_verdict"),  # the gate's paired verdict (edge_kto_runtime.paired)
                "paired_exported": r.get("paired_exported"),
                "paired_student": r.get("paired_student"),
                "passed": r["passed"],
                "extra_s": extra_s,
                "export_s": res.seconds,
                "per_question": r.get("rows", []),
            }
        )
    return out


BINS = ((0.0, 2.0), (2.0, 5.0), (5.0, 1e9))


def _fragility(rows: list[dict[str, Any]]) -> str:
    """Which facts break: of the questions the fp student answers, the share each artifact keeps,
    by the fp log-prob margin of the accepted answer over its near miss (nats)."""
    head = (
        "| artifact | "
        + " | ".join(f"margin {lo:g}-{hi:g}" if hi < 1e9 else f"margin > {lo:g}" for lo, hi in BINS)
        + " |"
    )
    lines = [
        "fp-correct questions kept, by the fp margin of the accepted answer over its near miss:",
        "",
        head,
        "|---|" + "---|" * len(BINS),
    ]
    for r in rows:
        cells = []
        for lo, hi in BINS:
            q = [
                x
                for x in r["per_question"]
                if x.get("task_ok_fp") and x.get("hard_margin_fp") is not None and lo <= x["hard_margin_fp"] < hi
            ]
            cells.append(f"{sum(bool(x['task_ok']) for x in q)}/{len(q)}" if q else "-")
        lines.append(f"| {r['method']}: {r['artifact']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        "| method | artifact | MB | bits/w | KLD vs fp student | KLD vs exported weights | top-1 | hard pairs | "
        "task acc | retention | extra s | export s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['artifact']} | {r['mb']:.1f} | {f(r['bits_per_weight'], '.2f')} | "
            f"{f(r.get('kld_student_mean'), '.4f')} | {f(r['kld_mean'], '.4f')} | "
            f"{f(r['top1_agree'], '.1%')} | {f(r['hard_pref_agree'], '.0%')} | "
            f"{f(r['task_acc'], '.1%')} | {f(r['task_retention'], '.1%')} | {r['extra_s']:.0f} | {r['export_s']:.0f} |"
        )
    return "\n".join(lines)


def run(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    common = {
        "golden_data": a.golden,
        "golden_limit": a.limit,
        "golden_max_new_tokens": a.max_new_tokens,
        "golden_verifier": a.verifier,
        "calibration_data": a.data,
        "threads": a.threads,
        "thresholds": {"task_retention_min": 0.97},
    }
    rows: list[dict[str, Any]] = []
    methods = [m for m in a.methods.split(",") if m]
    if "plain" in methods:
        res = run_export(ExportConfig(source=a.run, out=str(work / "plain"), **PLAIN, **common), progress=a.progress)
        rows += _rows("plain PTQ", res, 0.0)
    if "calibrated" in methods:
        res = run_export(
            ExportConfig(source=a.run, out=str(work / "calibrated"), **CALIBRATED, **common), progress=a.progress
        )
        rows += _rows("imatrix + overrides", res, res.timings.get("imatrix_s", 0.0))
    if "finishing" in methods:
        finished, t = a.finished, 0.0
        if not finished:
            t0 = time.perf_counter()
            finished = str(
                run_finish(
                    FinishConfig(
                        source=a.run, data=a.data, out=str(work / "finish"), steps=a.finish_steps, lr=a.finish_lr
                    ),
                    progress=a.progress,
                ).out
            )
            t = time.perf_counter() - t0
        else:
            t = json.loads((Path(finished) / "finish_report.json").read_text()).get("seconds", 0.0)
        res = run_export(
            ExportConfig(source=finished, out=str(work / "finished"), **FINISHED, **common), progress=a.progress
        )
        rows += _rows("finishing (Q4_0 grid)", res, t)
    return {"rows": rows, "table": _table(rows), "fragility": _fragility(rows)}


def quick(a: argparse.Namespace, work: Path) -> None:
    """Tiny random Llama + the capitals task: every method's code path, in CI time."""
    from transformers import AutoTokenizer

    from edge_kto.models import fetch_model, make_tiny_llama

    root = Path(__file__).resolve().parent.parent
    tok = AutoTokenizer.from_pretrained(fetch_model("smollm2-135m-instruct", progress=False).hf_dir)
    a.run = str(make_tiny_llama(work / "tiny", tok, hidden=64))
    rows = [
        {
            "prompt": json.loads(x)["prompt"],
            "completion": f"The capital is {json.loads(x)['reference']}.",
            "label": i % 2 == 0,
            "reference": json.loads(x)["reference"],
        }
        for i, x in enumerate((root / "edge_kto/tasks/capitals/train.jsonl").read_text().splitlines())
    ]
    (work / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a.data = a.golden = str(work / "kto.jsonl")
    a.limit, a.max_new_tokens, a.finish_steps, a.verifier = 4, 8, 3, "contains_all"
    PLAIN["gguf"], PLAIN["onnx"] = ["Q8_0", "Q4_0"], [{"accuracy_level": 4}]
    CALIBRATED["gguf"] = CALIBRATED["gguf"][:2]
    FINISHED["onnx"] = [{"accuracy_level": 1}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="trained run folder (its merged model/) or HF model folder")
    ap.add_argument("--data", help="training KTO rows (imatrix calibration and finishing; never eval)")
    ap.add_argument("--golden", help="eval KTO rows (prompts, accepted/rejected answers, references) or a task folder")
    ap.add_argument("--finished", help="an existing finish folder (skips finishing; its time is taken from its report)")
    ap.add_argument("--verifier", default="contains_all")
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--finish-steps", type=int, default=60)
    ap.add_argument("--finish-lr", type=float, default=FinishConfig.lr)
    ap.add_argument("--methods", default="plain,calibrated,finishing")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/quant_retention.json")
    a = ap.parse_args()
    a.progress = not a.quick
    work = Path(tempfile.mkdtemp(prefix="edge-kto-retention-"))
    if a.quick:
        quick(a, work)
        a.out = a.out.replace(".json", "_quick.json")
    elif not (a.run and a.data and a.golden):
        ap.error("--run, --data and --golden are required (or --quick)")
    t = time.perf_counter()
    rep = run(a, work)
    print(rep["table"] + "\n\n" + rep["fragility"])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "command": " ".join(__import__("sys").argv),
                "run": a.run,
                "golden": a.golden,
                "limit": a.limit,
                "seconds": time.perf_counter() - t,
                "rows": rep["rows"],
                "table": rep["table"],
                "fragility": rep["fragility"],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
