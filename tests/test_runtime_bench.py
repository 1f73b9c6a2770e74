"""The latency harness: statistics against numpy and the shared fixtures, report schema, PNG,
a run on a tiny bundle, and the prefix cache cutting TTFT on SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_kto_runtime.stats import bootstrap_ci, drift, min_runs_for, percentile, summarize

FIXTURES = Path(__file__).parent / "fixtures" / "latency_cases.json"


def test_percentiles_and_summary_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 99, 100, 101, 1000):
        xs = rng.lognormal(-1, 0.5, n).tolist()
        for q in (0, 1, 50, 90, 99, 99.9, 100):
            assert percentile(xs, q) == pytest.approx(np.percentile(xs, q), rel=1e-12, abs=1e-15)
        s = summarize(xs, ci=False)
        assert s["mean"] == pytest.approx(np.mean(xs)) and s["stddev"] == pytest.approx(
            np.std(xs, ddof=1) if n > 1 else 0.0
        )


def test_shared_fixture_cases_hold():
    for case in json.loads(FIXTURES.read_text())["cases"]:
        s = summarize(case["values_s"], ci=False)
        for k, v in case["expected"].items():
            assert s[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (case["name"], k)


def test_p99_bootstrap_interval_brackets_the_estimate_and_matches_a_numpy_bootstrap():
    rng = np.random.default_rng(1)
    xs = rng.normal(0.75, 0.02, 300).tolist() + [1.5, 2.0]
    lo, hi = bootstrap_ci(xs, 99, n_boot=2000, seed=3)
    p99 = percentile(xs, 99)
    assert lo <= p99 <= hi and lo < hi
    boots = [np.percentile(rng.choice(xs, len(xs)), 99) for _ in range(2000)]
    nlo, nhi = np.percentile(boots, [2.5, 97.5])
    assert lo == pytest.approx(nlo, rel=0.05) and hi == pytest.approx(nhi, rel=0.1)
    assert bootstrap_ci(xs, 99, n_boot=500, seed=3) == bootstrap_ci(xs, 99, n_boot=500, seed=3)


def test_drift_and_min_runs():
    assert drift([1.0] * 50 + [1.3] * 50) == pytest.approx(1.3)
    assert drift([1.0] * 5) is None
    assert min_runs_for(99) == 100 and min_runs_for(90) == 10


@pytest.mark.integration
def test_bench_cli_on_a_tiny_bundle_writes_json_markdown_and_png(tiny_bundle, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_kto_runtime.cli",
            "bench",
            str(tiny_bundle),
            "--compare",
            "--artifact",
            "model-q8_0.gguf",
            "--artifact",
            "onnx-int4/",
            "--runs",
            "12",
            "--warmup",
            "2",
            "--n-prompt",
            "24",
            "--n-gen",
            "8",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    rep = json.loads((out / "bench.json").read_text())
    assert rep["n_prompt"] == 24 and rep["n_gen"] == 8 and rep["n_threads"] >= 1 and rep["peak_rss_mb"] > 0
    assert {"cpu", "os", "versions"} <= set(rep["environment"]) and rep["environment"]["versions"]["llama_cpp"]
    assert any("too few" in w for w in rep["warnings"])
    assert [r["artifact"] for r in rep["results"]] == ["model-q8_0.gguf", "onnx-int4/"]
    for r in rep["results"]:
        assert len(r["runs"]) == 12 and all(run["n_gen"] == 8 and run["n_prompt"] == 24 for run in r["runs"])
        for key in ("ttft_s", "e2e_s", "tpot_s", "gap_s"):
            assert {"min", "mean", "stddev", "p50", "p90", "p99", "max", "p99_ci95"} <= set(r[key])
            assert r[key]["min"] <= r[key]["p50"] <= r[key]["p99"] <= r[key]["max"]
        assert r["e2e_s"]["p50"] >= r["ttft_s"]["p50"] and r["avg_ts"] > 0 and r["stddev_ts"] >= 0 and r["load_s"] > 0
    assert min(r["e2e_p50_vs_fastest"] for r in rep["results"]) == 1.0
    assert (out / "bench.png").stat().st_size > 20_000 and "| model-q8_0.gguf |" in (out / "bench.md").read_text()


@pytest.mark.real_model
def test_prefix_cache_cuts_ttft_for_a_turn_after_the_system_prompt(smol_bundle, tmp_path):
    from edge_kto_runtime.bench import BenchConfig, run_bench

    base = dict(
        bundle=str(smol_bundle),
        artifacts=["model-q4_k_m.gguf"],
        n_prompt=128,
        n_turn=32,
        n_gen=4,
        runs=15,
        warmup=2,
        prefix_cache=True,
    )
    cached = run_bench(BenchConfig(**base, prefix_state=str(tmp_path / "sys.state")), progress=False)["results"][0]
    assert any(tmp_path.glob("sys-*.state")), "the system prompt's KV state was persisted"
    uncached = run_bench(BenchConfig(**{**base, "prefix_cache": False, "n_prompt": 160}), progress=False)["results"][0]
    assert cached["ttft_s"]["p50"] < 0.6 * uncached["ttft_s"]["p50"], (
        cached["ttft_s"]["p50"],
        uncached["ttft_s"]["p50"],
    )


@pytest.mark.integration
def test_bench_url_measures_a_running_server_over_sse(tiny_bundle, tmp_path):
    import threading

    from conftest import free_port

    from edge_kto_runtime import load
    from edge_kto_runtime.serve import ServeConfig, serve

    model = load(tiny_bundle, artifact="model-q8_0.gguf", verify=False)
    srv = serve(model, ServeConfig(port=free_port()))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    out = tmp_path / "url"
    try:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_kto_runtime.cli",
                "bench",
                "--url",
                f"http://127.0.0.1:{srv.server_address[1]}/v1",
                "--runs",
                "6",
                "--warmup",
                "1",
                "--n-prompt",
                "20",
                "--n-gen",
                "6",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        srv.shutdown()
        srv.server_close()
        model.close()
    assert p.returncode == 0, p.stderr
    rep = json.loads((out / "bench.json").read_text())
    r = rep["results"][0]
    assert r["backend"] == "http" and len(r["runs"]) == 6
    assert all(run["n_gen"] >= 1 for run in r["runs"]) and r["ttft_s"]["p50"] <= r["e2e_s"]["p50"]
    assert (out / "bench.png").stat().st_size > 10_000
