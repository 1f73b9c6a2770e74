"""Teacher coverage: training prompts with at least one answer the task's verifier passes, before and
after rejection sampling and reference-guided samples (``generate``'s ``coverage``), per intent.

    python benchmarks/teacher_coverage.py                 # the demo's teacher and generate settings
    python benchmarks/teacher_coverage.py --quick         # SmolLM2 on the capitals task (CI)

One generate run answers every question: its first round is exactly the plain generate stage
(``n`` samples per prompt, the same seeds), so "n samples" below is the anchor, read from the same
file as the rejection-sampled and the guided columns. The candidates file is kept beside the JSON
(``--work``): a rerun resumes it instead of sampling again.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_kto.data import read_task  # noqa: E402
from edge_kto.generate import CoverageConfig, GenerateConfig, run_generate  # noqa: E402
from edge_kto.jsonl import AppendLog, write_json_atomic  # noqa: E402
from edge_kto.teacher import SamplingParams, TeacherConfig  # noqa: E402
from edge_kto_runtime.verifiers import get_verifier  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "edge_kto" / "tasks"
RESULTS = Path(__file__).resolve().parent / "results"


def covered(rows: list[dict], verify, keep) -> dict[str, bool]:
    """prompt id -> whether any kept row passes."""
    out: dict[str, bool] = {}
    for r in rows:
        ok = keep(r) and bool(verify(r["completion"], r["reference"]))
        out[r["prompt_id"]] = out.get(r["prompt_id"], False) or ok
    return out


def cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 on the capitals task (CI)")
    ap.add_argument("--task", default=None)
    ap.add_argument("--accepted", type=int, default=1)
    ap.add_argument("--max-samples", type=int, default=8)
    ap.add_argument("--guided", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the candidates file (default: a temporary one)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.quick:
        task = a.task or str(TASKS / "capitals")
        teacher = TeacherConfig(kind="gguf", model="smollm2-135m-instruct", n_threads=2, parallel=8)
        sp = SamplingParams(n=1, temperature=0.8, max_new_tokens=24, seed=0)
        cov = CoverageConfig(accepted=a.accepted, max_samples=4, guided=1)
    else:  # demo.yaml's teacher and generate section
        task = a.task or str(TASKS / "brightnest_support")
        teacher = TeacherConfig(kind="gguf", model="qwen2.5-coder-1.5b-instruct", n_threads=2, parallel=16)
        sp = SamplingParams(n=2, temperature=0.8, max_new_tokens=96, seed=0)
        cov = CoverageConfig(accepted=a.accepted, max_samples=a.max_samples, guided=a.guided)
    import tempfile

    work = Path(a.work or tempfile.mkdtemp(prefix="teacher_coverage-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_generate(
        GenerateConfig(task, str(work / "candidates.jsonl"), teacher=teacher, sampling=sp, coverage=cov, progress=True)
    )
    seconds = time.perf_counter() - t0
    t = read_task(task)
    verify = get_verifier(t.verifier)
    rows = AppendLog(work / "candidates.jsonl").recover()
    cols = {
        f"n={sp.n}": covered(rows, verify, lambda r: r["sample_index"] < sp.n),
        f"<= {cov.max_samples} (rejection)": covered(rows, verify, lambda r: not r.get("guided")),
        f"+ {cov.guided} guided": covered(rows, verify, lambda r: True),
    }
    intents = sorted({it.intent or "(none)" for it in t.train})
    per = {
        i: {
            name: sum(c.get(it.id, False) for it in t.train if (it.intent or "(none)") == i) for name, c in cols.items()
        }
        for i in intents
    }
    n_of = {i: sum((it.intent or "(none)") == i for it in t.train) for i in intents}
    print(f"| intent | prompts | {' | '.join(cols)} |")
    print("|---|---|" + "---|" * len(cols))
    for i in intents:
        print(f"| {i} | {n_of[i]} | " + " | ".join(str(per[i][c]) for c in cols) + " |")
    total = {c: sum(v.values()) for c, v in cols.items()}
    print(f"| all | {len(t.train)} | " + " | ".join(f"{total[c]} ({total[c] / len(t.train):.1%})" for c in cols) + " |")
    print(f"samples: {len(rows)} ({sum(bool(r.get('guided')) for r in rows)} guided); {seconds:.0f} s this run")
    out = Path(a.out or RESULTS / ("teacher_coverage_quick.json" if a.quick else "teacher_coverage.json"))
    write_json_atomic(
        out,
        {
            "task": Path(task).name,
            "teacher": teacher.model,
            "sampling": sp.to_dict(),
            "coverage_config": {"accepted": cov.accepted, "max_samples": cov.max_samples, "guided": cov.guided},
            "prompts": len(t.train),
            "covered": total,
            "per_intent": {i: {"prompts": n_of[i], **per[i]} for i in intents},
            "samples": len(rows),
            "guided_samples": sum(bool(r.get("guided")) for r in rows),
            "generate_result": res.coverage,
            "seconds_this_run": round(seconds, 1),
            "cpu": cpu_model(),
            "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/teacher_coverage.py" + (" --quick" if a.quick else ""),
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
