"""The runtime vs a bare loop on the same file and threads: latency percentiles and decode speed.

For each artifact: (1) a bare loop — llama-cpp-python's low-level ``eval`` + argmax over the last
logits, or onnxruntime-genai's ``Generator`` loop; (2) ``edge-runtime bench``'s own run (KV reset,
fixed 64 tokens, greedy). Both get the same synthetic 128-token prompts, 100 runs after 5
warm-ups, interleaved run by run. Ratio = bare / ours on tokens/s and ours / bare on p99.

    python benchmarks/runtime_overhead.py BUNDLE [--artifacts model-q4_k_m.gguf,model-q4_0.gguf,onnx-int4/]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from edge_kto_runtime import load
from edge_kto_runtime.bench import BenchConfig, _aggregate, _synthetic_ids, one_run


def bare_llama(m, ids: list[int], n_gen: int) -> dict:
    eng = m.backend  # the LlamaEngine: eval + argmax, nothing of EdgeModel's text handling
    eng.reset()
    t0 = time.perf_counter()
    times = []
    eng.eval(ids)
    for _ in range(n_gen):
        tok = int(eng.last_logits().argmax())
        times.append(time.perf_counter() - t0)
        eng.eval([tok])
    e2e = times[-1]
    return {
        "ttft": times[0],
        "e2e": e2e,
        "n_gen": n_gen,
        "n_prompt": len(ids),
        "tpot": (times[-1] - times[0]) / (n_gen - 1),
        "gaps": [b - a for a, b in zip(times, times[1:])],
    }


def bare_ort(m, ids: list[int], n_gen: int) -> dict:
    import onnxruntime_genai as og

    params = og.GeneratorParams(m.backend.model)
    params.set_search_options(max_length=len(ids) + n_gen, min_length=len(ids) + n_gen, do_sample=False)
    t0 = time.perf_counter()
    gen = og.Generator(m.backend.model, params)
    gen.append_tokens(ids)
    times = []
    while not gen.is_done():
        gen.generate_next_token()
        gen.get_next_tokens()
        times.append(time.perf_counter() - t0)
    return {
        "ttft": times[0],
        "e2e": times[-1],
        "n_gen": len(times),
        "n_prompt": len(ids),
        "tpot": (times[-1] - times[0]) / (len(times) - 1),
        "gaps": [b - a for a, b in zip(times, times[1:])],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--artifacts", default="model-q4_k_m.gguf,model-q4_0.gguf,onnx-int4/")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/runtime_overhead.json")
    a = ap.parse_args()
    cfg = BenchConfig(bundle=a.bundle, n_prompt=128, n_gen=64, runs=a.runs, warmup=a.warmup, threads=a.threads)
    rows = []
    for art in a.artifacts.split(","):
        m = load(a.bundle, artifact=art, n_threads=a.threads)
        rng = random.Random(0)
        prompts = [_synthetic_ids(m, 128, rng) for _ in range(a.warmup + a.runs)]
        bare_fn = bare_llama if m.backend.name == "llama.cpp" else bare_ort
        ours, bare = [], []
        for i, ids in enumerate(prompts):  # interleaved
            b = bare_fn(m, ids, 64)
            o = one_run(m, ids, cfg)
            if i >= a.warmup:
                bare.append(b)
                ours.append(o)
        ag_o, ag_b = _aggregate(ours, m.load_s, 0), _aggregate(bare, m.load_s, 0)
        rows.append(
            {
                "artifact": art,
                "quant": m.artifact.quant,
                "ours": {k: v for k, v in ag_o.items() if k != "runs"},
                "bare": {k: v for k, v in ag_b.items() if k != "runs"},
                "decode_ratio": ag_o["avg_ts"] / ag_b["avg_ts"],
                "e2e_p99_ratio": ag_o["e2e_s"]["p99"] / ag_b["e2e_s"]["p99"],
            }
        )
        m.close()
    print(
        f"128-token prompt + 64 generated tokens, {a.runs} runs after {a.warmup} warm-ups, {a.threads} threads, "
        f"interleaved\n"
    )
    print(
        "| artifact | loop | TTFT p50/p90/p99 ms | E2E p50/p90/p99 ms | decode tok/s | ours / bare (tok/s) | "
        "ours / bare (E2E p99) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("bare", "ours"):
            x = r[name]
            t, e = x["ttft_s"], x["e2e_s"]
            ratio = f"{r['decode_ratio']:.3f} | {r['e2e_p99_ratio']:.3f}" if name == "ours" else " | "
            print(
                f"| {r['artifact']} | {name} | {1e3 * t['p50']:.0f} / {1e3 * t['p90']:.0f} / {1e3 * t['p99']:.0f} | "
                f"{1e3 * e['p50']:.0f} / {1e3 * e['p90']:.0f} / {1e3 * e['p99']:.0f} | {x['avg_ts']:.1f} | {ratio} |"
            )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": a.runs, "threads": a.threads, "rows": rows}, indent=2)
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
