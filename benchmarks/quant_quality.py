"""Quantization quality of each artifact type against the fp model (the alignment check's metrics).

Golden set: the demo task's eval prompts; for each, a desirable completion (the knowledge base's
canonical answer for its intent) and two undesirable ones (the canonical answers of two other
intents: fluent, on-topic for the product, wrong). Exports one bundle with every GGUF type asked
for plus ONNX int4 with the int8 LM head, and a second with the builder's all-int4 default, then
runs ``edge-kto check`` on both.

    python benchmarks/quant_quality.py [--model smollm2] [--gguf Q8_0,Q4_K_M,Q4_0,Q2_K]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from edge_kto.check import CheckConfig, run_check
from edge_kto.data import read_task
from edge_kto.export import ExportConfig, run_export
from edge_kto.models import fetch_model
from edge_kto_runtime.check import markdown_table

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "brightnest_support"


def golden_pairs(out: Path, limit: int, seed: int = 0) -> Path:
    task = read_task(TASK)
    kb = {}
    for line in task.teacher_context.splitlines():
        if line.startswith("- ") and ":" in line:
            k, v = line[2:].split(":", 1)
            kb[k.strip().replace(" ", "_")] = v.strip()
    rows = [json.loads(x) for x in (TASK / "eval.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    data = []
    for r in rows[:limit]:
        others = [k for k in kb if k != r["intent"]]
        msgs = ([{"role": "system", "content": task.system}] if task.system else []) + [
            {"role": "user", "content": r["prompt"]}
        ]
        data.append(
            {
                "id": r["id"] + "#good",
                "prompt": msgs,
                "completion": kb[r["intent"]],
                "label": True,
                "reference": r["reference"],
            }
        )
        for j, k in enumerate(rng.sample(others, 2)):
            data.append(
                {
                    "id": f"{r['id']}#bad{j}",
                    "prompt": msgs,
                    "completion": kb[k],
                    "label": False,
                    "reference": r["reference"],
                }
            )
    out.write_text("".join(json.dumps(d) + "\n" for d in data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", help="HF model folder or run folder (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--gguf", default="Q8_0,Q4_K_M,Q4_0,Q2_K")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--out", default="benchmarks/results/quant_quality.json")
    a = ap.parse_args()
    src = a.source or str(fetch_model("smollm2-135m-instruct").hf_dir)
    work = Path(tempfile.mkdtemp(prefix="edge-kto-quality-"))
    golden = golden_pairs(work / "golden.jsonl", a.limit)
    t = time.perf_counter()
    results = []
    for name, gguf, int8_head in (("main", a.gguf.split(","), True), ("onnx-all-int4", [], False)):
        res = run_export(
            ExportConfig(
                source=src,
                out=str(work / name),
                gguf=gguf,
                onnx_int8_head=int8_head,
                golden_data=str(golden),
                golden_limit=a.limit,
                golden_verifier="contains_all",
                check=False,
            ),
            progress=False,
        )
        results += run_check(CheckConfig(bundle=str(res.bundle), reference=src), progress=False).results
    table = markdown_table(results)
    print(table)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "source": src,
                "golden_prompts": a.limit,
                "seconds": time.perf_counter() - t,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
