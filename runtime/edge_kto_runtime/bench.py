"""``edge-runtime bench``: tail latency of a bundle's artifacts on the device itself.

Per run: TTFT (request start -> first token), TPOT (mean gap after the first token), every
inter-token gap, end-to-end time, tokens generated, prompt tokens. Aggregates with
:mod:`edge_kto_runtime.stats` (p50/p90/p99 + a bootstrap interval for p99). Runs generate a fixed
number of tokens (EOS ignored) unless ``natural_stop``; warm-up runs are excluded; each run
starts from an empty KV cache unless ``prefix_cache`` (then the system prompt's KV is kept and
each request pays only for its own turn). ``compare`` interleaves the artifacts run by run, so
a slow period of the device hits them all alike.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .backends import BACKENDS
from .defaults import BENCH_N_GEN, BENCH_N_PROMPT, BENCH_RUNS, BENCH_WARMUP
from .errors import InvalidInput
from .model import EdgeModel, load
from .stats import drift, min_runs_for, summarize

SYSTEM = (
    "You are the support assistant of a smart-home company. Answer briefly and precisely, keep menu paths and "
    "numbers exactly as in the documentation, and say so when you do not know. "
)


@dataclass
class BenchConfig:
    bundle: str
    artifacts: list[str] = field(default_factory=list)  # empty: the default artifact (or all with compare)
    n_prompt: int = BENCH_N_PROMPT
    n_gen: int = BENCH_N_GEN
    runs: int = BENCH_RUNS
    warmup: int = BENCH_WARMUP
    threads: int | None = None
    seed: int = 0
    cold: bool = False
    natural_stop: bool = False
    compare: bool = False
    prefix_cache: bool = False
    prompts_file: str | None = None
    n_turn: int = 32  # user-turn tokens after the cached system prompt (prefix_cache)
    prefix_state: str | None = None  # llama.cpp: persist/restore the system prompt's KV state here
    expect_digest: str | None = None  # the manifest sha256 printed at export; any other manifest is refused


def _synthetic_ids(m: EdgeModel, n: int, rng: random.Random) -> list[int]:
    """Exactly ``n`` token ids of plausible text (words re-tokenized, then cut)."""
    words = "the device app light hub sensor battery menu reset network update schedule door lamp code".split()
    ids: list[int] = []
    while len(ids) < n:
        ids += m.tokenize(" ".join(rng.choice(words) for _ in range(64)))
    return ids[:n]


def read_prompt_lines(path: str | Path) -> list[str]:
    """One user turn per line of a text file: split at ``\n`` only (U+2028 may sit inside a prompt),
    a BOM is not part of line 1, CRLF endings and blank lines are dropped."""
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [x.rstrip("\r") for x in text.split("\n") if x.strip()]
    if not lines:
        raise InvalidInput(f"{path}: no prompts (one user turn per line)")
    return lines


def _prompts(m: EdgeModel, cfg: BenchConfig, n: int) -> list[list[int]]:
    rng = random.Random(cfg.seed)
    if cfg.prompts_file:
        lines = read_prompt_lines(cfg.prompts_file)
        return [m.encode([{"role": "user", "content": lines[i % len(lines)]}]) for i in range(n)]
    if cfg.prefix_cache:
        system = m.tokenize(SYSTEM * 8)[: cfg.n_prompt]
        return [system + _synthetic_ids(m, cfg.n_turn, rng) for _ in range(n)]
    return [_synthetic_ids(m, cfg.n_prompt, rng) for _ in range(n)]


def one_run(m: EdgeModel, ids: list[int], cfg: BenchConfig) -> dict[str, Any]:
    if not cfg.prefix_cache:
        m.reset()
    t0 = time.perf_counter()
    times = []
    for tok in m.generate_ids(ids, cfg.n_gen, 0.0):
        times.append(time.perf_counter() - t0)
        if cfg.natural_stop and tok in m.eos_ids:
            break
    e2e = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {
        "ttft": times[0] if times else e2e,
        "e2e": e2e,
        "n_gen": len(times),
        "n_prompt": len(ids),
        "tpot": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
        "gaps": gaps,
    }


def _aggregate(runs: list[dict[str, Any]], load_s: float, seed: int) -> dict[str, Any]:
    ttft = [r["ttft"] for r in runs]
    e2e = [r["e2e"] for r in runs]
    tpot = [r["tpot"] for r in runs if r["tpot"] is not None]
    gaps = [g for r in runs for g in r["gaps"]]
    gen_ts = [(r["n_gen"] - 1) / (r["e2e"] - r["ttft"]) for r in runs if r["n_gen"] > 1 and r["e2e"] > r["ttft"]]
    pp_ts = [r["n_prompt"] / r["ttft"] for r in runs]
    s = summarize(gen_ts, ci=False)
    return {
        "ttft_s": summarize(ttft, seed=seed),
        "e2e_s": summarize(e2e, seed=seed),
        "tpot_s": summarize(tpot, seed=seed) if tpot else None,
        "gap_s": summarize(gaps, seed=seed) if gaps else None,
        "avg_ts": s["mean"],
        "stddev_ts": s["stddev"],
        "pp_avg_ts": sum(pp_ts) / len(pp_ts),
        "n_gen_mean": sum(r["n_gen"] for r in runs) / len(runs),
        "drift_e2e": drift(e2e),
        "load_s": load_s,
        "runs": [{k: v for k, v in r.items() if k != "gaps"} for r in runs],
    }


def _environment(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith(("model name", "Hardware", "Processor")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, Any] = {"edge_kto_runtime": __version__, "python": platform.python_version()}
    for mod in (spec.requires for spec in BACKENDS.values()):
        if mod in sys.modules:
            versions[mod] = getattr(sys.modules[mod], "__version__", None)
    return {
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "n_threads": threads,
        "versions": versions,
    }


def _restore_prefix(models: list[EdgeModel], system_ids: list[int], path: Path) -> None:
    """Load the system prompt's KV state saved by an earlier run, or compute and save it."""
    for m in models:
        if not m.capabilities.prefix_cache:
            continue
        p = path.with_name(f"{path.stem}-{Path(m.artifact.path).stem}{path.suffix or '.state'}")
        key = hashlib.sha256(json.dumps([m.artifact.entry.get("sha256"), system_ids]).encode()).hexdigest()
        try:
            if p.is_file():
                m.load_prefix(p, key)
                continue
        except ValueError:  # another model or prompt (or not a state file): rebuild it
            pass
        m.save_prefix(system_ids, p, key)


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from .bundle import open_bundle

    b = open_bundle(cfg.bundle, verify=True, expect_digest=cfg.expect_digest)
    names = cfg.artifacts or ([a.path for a in b.artifacts] if cfg.compare else [])
    t = time.perf_counter()
    models = [load(b.root, artifact=n or None, n_threads=cfg.threads, verify=False) for n in (names or [""])]
    warnings = []
    if cfg.runs < min_runs_for(99):
        warnings.append(
            f"{cfg.runs} runs are too few for a meaningful p99 (need >= {min_runs_for(99)}); it is the max in disguise"
        )
    prompts = _prompts(models[0], cfg, cfg.warmup + cfg.runs)
    no_cache = sorted({m.backend_name for m in models if not m.capabilities.prefix_cache})
    if cfg.prefix_cache and no_cache:
        warnings.append(
            f"prefix cache: {', '.join(no_cache)} keeps no KV state between requests; those runs pay the full prompt"
        )
    if cfg.prefix_cache and cfg.prefix_state:
        _restore_prefix(models, prompts[0][: cfg.n_prompt], Path(cfg.prefix_state))
    per: dict[str, list[dict[str, Any]]] = {m.artifact.path: [] for m in models}
    loads = {m.artifact.path: m.load_s for m in models}
    total = (cfg.warmup + cfg.runs) * len(models)
    done = 0
    for i, ids in enumerate(prompts):  # interleaved: run i of every artifact before run i + 1
        for k, m in enumerate(models):
            if cfg.cold:
                path = m.artifact.path
                m.close()
                t0 = time.perf_counter()
                models[k] = m = load(b.root, artifact=path, n_threads=cfg.threads, verify=False)
                cold_s = time.perf_counter() - t0
            r = one_run(m, ids, cfg)
            if cfg.cold:
                r["ttft"] += cold_s
                r["e2e"] += cold_s
            if i >= cfg.warmup:
                per[m.artifact.path].append(r)
            done += 1
            if progress and done % max(1, total // 20) == 0:
                print(f"\rbench {done}/{total}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    results = []
    for m in models:
        agg = _aggregate(per[m.artifact.path], loads[m.artifact.path], cfg.seed)
        if agg["drift_e2e"] and agg["drift_e2e"] > 1.1:
            warnings.append(
                f"{m.artifact.path}: the last 10% of runs were {agg['drift_e2e']:.2f}x slower than the first "
                f"10% (thermal throttling or background load?)"
            )
        results.append(
            {
                "artifact": m.artifact.path,
                "backend": m.backend_name,
                "quant": m.artifact.quant,
                "bytes": m.artifact.entry.get("bytes"),
                **agg,
            }
        )
    env = _environment(models[0].n_threads)
    for m in models:
        m.close()
    fastest = min(r["e2e_s"]["p50"] for r in results)
    for r in results:
        r["e2e_p50_vs_fastest"] = r["e2e_s"]["p50"] / fastest
    return {
        "schema": "edge-kto-bench/1",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "bundle": str(b.root),
        "config": asdict(cfg),
        "n_prompt": cfg.n_turn if cfg.prefix_cache else cfg.n_prompt,
        "n_gen": cfg.n_gen,
        "n_threads": env["n_threads"],
        "environment": env,
        "peak_rss_mb": peak_rss_mb(),
        "setup_s": time.perf_counter() - t,
        "warnings": warnings,
        "results": results,
    }
