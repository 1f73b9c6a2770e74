"""GGUF teacher throughput: batched decoding (``parallel: P``) vs one answer at a time, same prompts, one run.

    python benchmarks/teacher_throughput.py                 # the demo's teacher and generate settings
    python benchmarks/teacher_throughput.py --quick         # SmolLM2 on the capitals task (CI)

The anchor is the one-at-a-time path (``parallel: 1``, llama-cpp-python's ``create_completion``
with the shared prefix kept in the KV cache). For each P it reports samples/s and generated
tokens/s as a ratio to the anchor, and how many answers equal the anchor's: sampled (the demo's
``generate``: n per prompt at temperature T) and greedy (``generate_eval``). The model file is read
once before timing, so neither side pays for a cold page cache.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_kto.data import read_task  # noqa: E402
from edge_kto.generate import teacher_messages  # noqa: E402
from edge_kto.jsonl import write_json_atomic  # noqa: E402
from edge_kto.models import fetch_model  # noqa: E402
from edge_kto.models.loader import gguf_path  # noqa: E402
from edge_kto.teacher import GenRequest, SamplingParams, TeacherConfig, make_teacher  # noqa: E402

TASKS = Path(__file__).resolve().parents[1] / "edge_kto" / "tasks"


def timed(cfg: TeacherConfig, reqs: list[GenRequest], sp: SamplingParams) -> tuple[list[list[str]], float, int]:
    """Answers, seconds (model load excluded) and generated tokens."""
    with make_teacher(cfg) as t:
        t0 = time.perf_counter()
        answers = t.generate(reqs, sp)
        seconds = time.perf_counter() - t0
        tokens = sum(len(t.engine.tokenize(a, special=False)) for texts in answers for a in texts)
    return answers, seconds, tokens


def same(a: list[list[str]], b: list[list[str]]) -> int:
    return sum(x == y for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--task", default="brightnest_support")
    p.add_argument("--limit", type=int, default=24, help="training prompts sampled (n each)")
    p.add_argument("--greedy-limit", type=int, default=16, help="eval prompts answered greedily")
    p.add_argument("-n", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--parallel", default="16", help="comma-separated P values")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="SmolLM2 on the capitals task, small sizes")
    p.add_argument("--out", default="benchmarks/results/teacher_throughput.json")
    a = p.parse_args()
    if a.quick:
        a.model, a.task, a.parallel, a.repeats = "smollm2-135m-instruct", "capitals", "4", 1
        a.limit, a.greedy_limit, a.max_new_tokens = 8, 6, 24
        a.out = a.out.replace(".json", "_quick.json")  # never over the full run's numbers
    fetch_model(a.model, progress=False)
    Path(gguf_path(a.model)).read_bytes()  # warm the page cache for both sides
    task = read_task(TASKS / a.task)

    def reqs(items, n):
        return [
            GenRequest(it.id, teacher_messages(it.prompt, task.system, task.teacher_context), list(range(n)))
            for it in items
        ]

    sampled_reqs, greedy_reqs = reqs(task.train[: a.limit], a.n), reqs(task.eval[: a.greedy_limit], 1)
    sp = SamplingParams(n=a.n, temperature=a.temperature, max_new_tokens=a.max_new_tokens, seed=0)
    gp = SamplingParams(n=1, temperature=0.0, max_new_tokens=a.max_new_tokens)

    def cfg(par):
        return TeacherConfig(kind="gguf", model=a.model, n_threads=a.threads, parallel=par)

    n_samples = sum(len(r.sample_indices) for r in sampled_reqs)
    pars = [int(x) for x in a.parallel.split(",")]
    seconds: dict[int, list[float]] = {par: [] for par in [1, *pars]}
    answers: dict[int, list[list[str]]] = {}
    tokens: dict[int, int] = {}
    for _ in range(a.repeats):  # interleaved, so a slow spell of the machine hits every side
        for par in seconds:
            out, s, tok = timed(cfg(par), sampled_reqs, sp)
            seconds[par].append(s)
            answers.setdefault(par, out)
            tokens.setdefault(par, tok)
    rows = []
    for par, ss in seconds.items():
        med = statistics.median(ss)
        rows.append(
            {
                "parallel": par,
                "samples": n_samples,
                "seconds": ss,
                "median_seconds": med,
                "samples_per_s": n_samples / med,
                "tokens_per_s": tokens[par] / med,
                "ratio": statistics.median(seconds[1]) / med,
                "ratios_per_repeat": [b / s for b, s in zip(seconds[1], ss)],
                "sampled_same": same(answers[par], answers[1]),
            }
        )

    # Greedy (generate_eval): one at a time, batched at the largest P, and each prompt decoded alone
    # on a freshly loaded model (the answer that depends on the prompt only).
    gseq, gseq_s, _ = timed(cfg(1), greedy_reqs, gp)
    gbat, gbat_s, _ = timed(cfg(max(pars)), greedy_reqs, gp)
    galone = [timed(cfg(1), [r], gp)[0][0] for r in greedy_reqs]
    greedy = {
        "prompts": len(greedy_reqs),
        "sequential_seconds": gseq_s,
        "batched_seconds": gbat_s,
        "batched_parallel": max(pars),
        "batched_equals_sequential": same(gbat, gseq),
        "batched_equals_alone": same(gbat, galone),
        "sequential_equals_alone": same(gseq, galone),
    }

    print(
        f"\n{a.model} on {a.task}: {len(sampled_reqs)} prompts x n={a.n} at T={a.temperature}, max "
        f"{a.max_new_tokens} new tokens, {a.threads} threads, median of {a.repeats}"
    )
    print("| parallel | samples/s | tokens/s | vs one at a time (per repeat) | sampled = one at a time |")
    print("|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{x:.2f}" for x in r["ratios_per_repeat"])
        print(
            f"| {r['parallel']} | {r['samples_per_s']:.3f} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x ({per}) "
            f"| {r['sampled_same']}/{n_samples} |"
        )
    g = greedy
    print(
        f"greedy, {g['prompts']} eval prompts: one at a time {g['sequential_seconds']:.1f} s, parallel "
        f"{g['batched_parallel']} {g['batched_seconds']:.1f} s; batched = one at a time "
        f"{g['batched_equals_sequential']}/{g['prompts']}, batched = alone {g['batched_equals_alone']}, "
        f"one at a time = alone {g['sequential_equals_alone']}"
    )
    write_json_atomic(
        a.out,
        {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.processor() or platform.machine(),
            "command": " ".join(sys.argv),
            "model": a.model,
            "task": a.task,
            "threads": a.threads,
            "n": a.n,
            "temperature": a.temperature,
            "max_new_tokens": a.max_new_tokens,
            "repeats": a.repeats,
            "rows": rows,
            "greedy": greedy,
        },
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
