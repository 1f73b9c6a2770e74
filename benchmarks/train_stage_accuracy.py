"""What KTO added in a pipeline's own training run: fp accuracy on the eval split of the SFT warm start
alone (its ``sft_adapter`` merged into the base) and of the trained model, for each train stage given.

    python benchmarks/train_stage_accuracy.py runs/demo/stages/train-<key> [runs/demo/stages/train-<key> ...] \
        --task edge_kto/tasks/brightnest_support

Greedy answers (96 tokens), the task's verifier; cached next to each model (``eval_96.json``), so a
second call costs nothing. The same helpers as ``distill_ablation.py`` (one seed per stage: a stage
is one training run). Prints a table and writes JSON to ``benchmarks/results/train_stage_accuracy_<task>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("train_stages", nargs="+", type=Path)
    ap.add_argument("--task", default=str(ROOT / "edge_kto" / "tasks" / "brightnest_support"))
    ap.add_argument("--student", default="smollm2-135m-instruct")
    ap.add_argument("--out")
    a = ap.parse_args()

    from distill_ablation import _accuracy, _sft_only

    from edge_kto.data import read_task
    from edge_kto.intervals import paired_difference
    from edge_kto.models.fetch import fetch_model

    task = read_task(a.task)
    base = str(fetch_model(a.student, progress=False).hf_dir)
    rows = []
    for stage in a.train_stages:
        run = stage / "run"
        sft, kto = _accuracy(_sft_only(run, base), task, 96), _accuracy(run / "model", task, 96)
        d, lo, hi = paired_difference([kto], [sft])
        done = json.loads((stage / "done.json").read_text())["result"]
        rows.append(
            {
                "stage": stage.name,
                "rows": done["rows"],
                "kto_steps": done["steps"],
                "sft_only": sum(sft),
                "sft_kto": sum(kto),
                "total": len(sft),
                "kto_minus_sft": [round(x, 2) for x in (d, lo, hi)],
            }
        )
    lines = [
        "| train stage | rows | KTO steps | SFT only | SFT + KTO | KTO − SFT (points, 95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, lo, hi = r["kto_minus_sft"]
        lines.append(f"| {r['stage']} | {r['rows']} | {r['kto_steps']} | {r['sft_only']}/{r['total']} | "
                     f"{r['sft_kto']}/{r['total']} | {d:+.1f} [{lo:+.1f}, {hi:+.1f}] |")  # fmt: skip
    print("\n".join(lines))
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"train_stage_accuracy_{task.name}.json")
    out.write_text(json.dumps({"task": task.name, "stages": rows, "table": "\n".join(lines)}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
