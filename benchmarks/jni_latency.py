"""The Android app's llama.cpp path (JNI bridge + LatencyBench, run on this host) vs the Python
runtime (`edge-runtime bench`'s run) on the same GGUF, threads and fixed-length runs.

Both sides: KV reset per run, a synthetic prompt of exactly N_PROMPT tokens, exactly N_GEN greedy
tokens with end-of-sequence ignored. The JVM runs in a child process (android_demo/llama/host_build.sh
builds it against llama-cpp-python's libllama), so the two alternate in blocks of runs to share
the machine's drift. Ratio = JNI / runtime (below 1 = the app's path is faster).

    python benchmarks/jni_latency.py BUNDLE [--runs 100] [--blocks 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from edge_kto_runtime import load, open_bundle
from edge_kto_runtime.bench import BenchConfig, _synthetic_ids, one_run
from edge_kto_runtime.stats import summarize

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "android_demo" / "llama" / "build" / "host"


def jni_block(gguf: Path, threads: int, warmup: int, runs: int, n_prompt: int, n_gen: int, seed: int) -> list[dict]:
    cp = f"{HOST / 'classes'}:{HOST / 'test-classes'}"
    out = subprocess.run(
        [
            "java",
            f"-Djava.library.path={HOST}",
            "-cp",
            cp,
            "dev.edgekto.llama.LlamaHostBench",
            str(gguf),
            str(threads),
            str(warmup),
            str(runs),
            str(n_prompt),
            str(n_gen),
            str(seed),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "jni_latency.json"))
    a = ap.parse_args()

    subprocess.run([str(ROOT / "android_demo" / "llama" / "host_build.sh")], check=True)
    art = next(x for x in open_bundle(a.bundle, verify=False).artifacts if x.backend == "llama.cpp")
    gguf = Path(a.bundle) / art.path
    cfg = BenchConfig(bundle=a.bundle, n_prompt=a.n_prompt, n_gen=a.n_gen, runs=a.runs, threads=a.threads)
    per = a.runs // a.blocks
    jni, py = [], []
    with load(a.bundle, artifact=art.path, n_threads=a.threads, verify=False) as m:
        rng = random.Random(0)
        for _ in range(a.warmup):
            one_run(m, _synthetic_ids(m, a.n_prompt, rng), cfg)
        for b in range(a.blocks):
            jni += jni_block(gguf, a.threads, a.warmup, per, a.n_prompt, a.n_gen, seed=b)
            py += [one_run(m, _synthetic_ids(m, a.n_prompt, rng), cfg) for _ in range(per)]
            print(f"block {b + 1}/{a.blocks}: {len(jni)} JNI runs, {len(py)} runtime runs", file=sys.stderr, flush=True)

    rows = {}
    for metric in ("ttft", "tpot", "e2e"):
        j = summarize([r[metric] for r in jni], ci=False)
        p = summarize([r[metric] for r in py], ci=False)
        rows[metric] = {"jni": j, "runtime": p, "ratio_p50": j["p50"] / p["p50"], "ratio_p99": j["p99"] / p["p99"]}
    print(f"\n{art.quant} {gguf.name}, {a.threads} threads, {a.n_prompt}+{a.n_gen} tokens, {len(jni)} runs each\n")
    print("| metric | JNI p50 / p99 (ms) | runtime p50 / p99 (ms) | JNI / runtime p50 | p99 |")
    print("|---|---|---|---|---|")
    for metric, r in rows.items():
        print(
            f"| {metric} | {1e3 * r['jni']['p50']:.1f} / {1e3 * r['jni']['p99']:.1f} | "
            f"{1e3 * r['runtime']['p50']:.1f} / "
            f"{1e3 * r['runtime']['p99']:.1f} | {r['ratio_p50']:.3f} | {r['ratio_p99']:.3f} |"
        )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(
        json.dumps(
            {
                "bundle": a.bundle,
                "artifact": art.path,
                "threads": a.threads,
                "n_prompt": a.n_prompt,
                "n_gen": a.n_gen,
                "runs": len(jni),
                "metrics": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
