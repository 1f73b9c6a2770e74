"""``edge-runtime``: the device-side command line (one subcommand per job)."""

from __future__ import annotations

import argparse
import json
import sys

from . import SCHEMA_VERSION, __version__
from .backends import backend_names
from .defaults import BENCH_N_GEN, BENCH_N_PROMPT, BENCH_RUNS, BENCH_WARMUP, MAX_NEW_TOKENS
from .errors import GateFailed, InvalidInput, add_common_flags, run_cli
from .serve import ServeConfig


def _thresholds(pairs: list[str] | None) -> dict[str, float] | None:
    """``--threshold kld_mean_max=0.1`` (repeatable) over the thresholds the export's gate used."""
    from .check import Thresholds

    if not pairs:
        return None
    out: dict[str, float] = {}
    known = list(Thresholds.__dataclass_fields__)
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or name not in known:
            raise InvalidInput(f"--threshold {p!r}: expected NAME=VALUE with NAME one of {', '.join(known)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise InvalidInput(f"--threshold {p!r}: {value!r} is not a number") from None
    return out


def cmd_check(a: argparse.Namespace) -> int:
    from .bundle import open_bundle
    from .check import markdown_table, run_device_check

    results = run_device_check(
        a.bundle, a.artifact, thresholds=_thresholds(a.threshold), n_threads=a.threads, expect_digest=a.expect_digest
    )
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        print("device-side alignment check (fp values from golden.jsonl; KL over the fp top-k + rest):")
        print(markdown_table(results))
        server = (open_bundle(a.bundle, verify=False).manifest.get("alignment") or {}).get("per_artifact", {})
        for r in results:
            s = server.get(r["artifact"])
            if s:
                print(
                    f"{r['artifact']}: server KLD(full) {s['kld_mean']:.4f} / top-k {s['kld_topk_mean']:.4f}, "
                    f"here top-k "
                    f"{r['kld_mean']:.4f}; top-1 server {s['top1_agree']:.3f} here {r['top1_agree']:.3f}"
                )
    for r in results:
        if not r["passed"]:
            print(f"FAILED {r['artifact']}: {'; '.join(r['failures'])}", file=sys.stderr)
    return 0 if all(r["passed"] for r in results) else GateFailed.exit_code


def cmd_generate(a: argparse.Namespace) -> int:
    from .model import load

    with load(
        a.bundle, backend=a.backend, artifact=a.artifact, n_threads=a.threads, expect_digest=a.expect_digest
    ) as m:
        prompt = [{"role": "user", "content": a.prompt}] if not a.raw else a.prompt
        for piece in m.stream(prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed):
            print(piece, end="", flush=True)
        print()
    return 0


def _default_db(bundle: str) -> str:
    from pathlib import Path

    b = Path(bundle).resolve()  # "." has no name of its own
    return str(b.with_name((b.stem if b.is_file() else b.name) + "-feedback.sqlite"))


def cmd_serve(a: argparse.Namespace) -> int:
    from .model import load
    from .serve import ServeConfig, check_bindable, serve

    cfg = ServeConfig(
        host=a.host,
        port=a.port,
        api_key=a.api_key,
        max_body_bytes=a.max_body_bytes,
        max_tokens_cap=a.max_tokens_cap,
        model_name=a.model_name,
        feedback_db=None if a.no_feedback else (a.feedback_db or _default_db(a.bundle)),
        allowed_hosts=tuple(a.allowed_host or ()),
        cors_origins=tuple(a.cors_origin or ()),
        max_connections=a.max_connections,
        max_connections_per_client=a.max_connections_per_client,
        timeout_s=a.timeout,
        request_deadline_s=a.request_deadline,
    )
    cfg.validate()  # before the (slow) load: a bad flag fails at once
    check_bindable(cfg.host, cfg.port)  # and so does a port in use
    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.api_key:
        print(
            f"edge-runtime: warning: serving on {a.host} without --api-key: anyone on the network can use it",
            file=sys.stderr,
        )
    m = load(
        a.bundle,
        backend=a.backend,
        artifact=a.artifact,
        n_threads=a.threads,
        n_ctx=a.n_ctx,
        require_passed=not a.allow_failed,
        expect_digest=a.expect_digest,
    )
    try:
        srv = serve(m, cfg)
    except BaseException:
        m.close()
        raise
    srv.verbose = a.verbose
    info = m.info()
    shown = f"[{a.host}]" if ":" in a.host else a.host
    print(
        f"serving {info['artifact']} ({info['backend']}, {info['quant']}) on http://{shown}:{srv.server_address[1]}/v1 "
        f"— loaded in {info['load_s']:.2f} s, verified in {info['verify_s']:.2f} s; feedback: "
        f"{cfg.feedback_db or 'off'}",
        flush=True,
    )
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
        m.close()
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .bundle import failed_artifacts, manifest_digest, open_bundle

    b = open_bundle(a.bundle, verify=True, expect_digest=a.expect)
    digest = manifest_digest(b.root)
    failed = failed_artifacts(b)
    for art in b.artifacts:
        state = f"gate FAILED ({'; '.join(failed[art.path])})" if art.path in failed else "gate passed"
        print(f"  {art.path}: {art.backend} {art.quant}, hashes ok, {state}")
    print(
        f"{b.root}: every listed file matches its sha256; manifest digest {digest}"
        + (" (as expected)" if a.expect else " — pin it with --expect on the device")
    )
    return 0


def cmd_feedback(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .feedback import FeedbackStore

    store = FeedbackStore(a.db, create=False)
    try:
        if a.feedback_command == "export":
            bundle = a.bundle
            if bundle and Path(bundle).exists():  # a bundle folder or zip: its manifest's digest
                from .bundle import manifest_digest, open_bundle

                bundle = manifest_digest(open_bundle(bundle, verify=False).root)
            n, blank = store.export_kto(a.out, bundle)
            print(
                f"{a.out}: {n} rated rows"
                + (f" of bundle {bundle[:12]}" if bundle else "")
                + (f" ({blank} with a blank completion left out)" if blank else "")
                + f" — KTO JSONL: train on them with `edge-kto train --data {a.out}`"
            )
        else:
            print(json.dumps(store.counts()))
    finally:
        store.close()
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench import BenchConfig, _aggregate, _environment, peak_rss_mb, run_bench
    from .bench_report import markdown, plot

    cfg = BenchConfig(
        bundle=a.bundle or "",
        artifacts=a.artifact or [],
        n_prompt=a.n_prompt,
        n_gen=a.n_gen,
        runs=a.runs,
        warmup=a.warmup,
        threads=a.threads,
        seed=a.seed,
        cold=a.cold,
        natural_stop=a.natural_stop,
        compare=a.compare,
        prefix_cache=a.prefix_cache,
        prompts_file=a.prompts,
        n_turn=a.n_turn,
        prefix_state=a.prefix_state,
        expect_digest=a.expect_digest,
    )
    if a.url:
        from .bench_http import run_http_bench

        runs = run_http_bench(a.url, a.n_prompt, a.n_gen, a.runs, a.warmup, a.seed, a.model, a.api_key)
        agg = _aggregate(runs, 0.0, a.seed)
        report = {
            "schema": "edge-kto-bench/1",
            "url": a.url,
            "config": cfg.__dict__,
            "n_prompt": a.n_prompt,
            "n_gen": a.n_gen,
            "n_threads": None,
            "environment": {**_environment(0), "n_threads": "server"},
            "peak_rss_mb": peak_rss_mb(),
            "warnings": ["n_prompt counts words for --url (the server tokenizes)"],
            "results": [
                {
                    "artifact": a.url,
                    "backend": "http",
                    "quant": a.model or "-",
                    "bytes": None,
                    **agg,
                    "e2e_p50_vs_fastest": 1.0,
                }
            ],
        }
    else:
        if not a.bundle:
            raise InvalidInput("bench needs a BUNDLE (or --url)")
        report = run_bench(cfg, progress=not a.quiet)
    from .atomic import write_atomic

    out = Path(a.out)
    write_atomic(out / "bench.json", json.dumps(report, indent=2))
    md = markdown(report)
    write_atomic(out / "bench.md", md)
    try:
        plot(report, out / "bench.png")
    except ImportError:
        print("(no matplotlib: PNG skipped; pip install 'edge-kto-runtime[plot]')", file=sys.stderr)
    print(md)
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0


def _expect_digest_flag(p: argparse.ArgumentParser) -> None:
    """The pin every verb that loads a bundle takes: the manifest digest printed at export."""
    p.add_argument(
        "--expect-digest",
        metavar="SHA256",
        help="refuse the bundle unless its manifest.json has this sha256 (printed by edge-kto export)",
    )


#: ServeConfig's defaults, shown and used by `edge-runtime serve` (one source: the dataclass).
_SERVE = ServeConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="Run edge-kto bundles offline (no torch).")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate (streamed) from a bundle")
    g.add_argument("bundle")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="use the prompt as raw text, not a chat user turn")
    g.add_argument("--backend", default="auto", choices=backend_names())
    g.add_argument("--artifact")
    g.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--threads", type=int)
    _expect_digest_flag(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="re-run the alignment check on this device (exit 3 on failure)")
    c.add_argument("bundle")
    c.add_argument("--artifact", action="append")
    c.add_argument("--threads", type=int)
    c.add_argument("--json", action="store_true")
    c.add_argument(
        "--threshold",
        action="append",
        metavar="NAME=VALUE",
        help="override one of the export's gate thresholds (e.g. kld_mean_max=0.1); repeatable",
    )
    _expect_digest_flag(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("serve", help="OpenAI-compatible server (127.0.0.1 unless --host)")
    s.add_argument("bundle")
    s.add_argument("--host", default=_SERVE.host)
    s.add_argument("--port", type=int, default=_SERVE.port)
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    s.add_argument("--backend", default="auto", choices=backend_names())
    s.add_argument("--artifact")
    s.add_argument("--threads", type=int)
    s.add_argument("--n-ctx", type=int)
    s.add_argument("--max-body-bytes", type=int, default=_SERVE.max_body_bytes)
    s.add_argument("--max-tokens-cap", type=int, default=_SERVE.max_tokens_cap)
    s.add_argument("--model-name")
    s.add_argument("--feedback-db", help="SQLite file for completions + thumbs (default: BUNDLE-feedback.sqlite)")
    s.add_argument("--no-feedback", action="store_true")
    s.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="also accept this Host name (localhost and IP literals always; '*' = any; DNS-rebinding guard)",
    )
    s.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="let a web app at ORIGIN (e.g. http://localhost:3000) call the API; none by default",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=_SERVE.max_connections,
        help="open connections served at once (503 beyond)",
    )
    s.add_argument(
        "--max-connections-per-client",
        type=int,
        help="open connections one client address may hold (default: 3/4 of --max-connections)",
    )
    s.add_argument(
        "--timeout", type=float, default=_SERVE.timeout_s, help="seconds a socket may stay silent before it is closed"
    )
    s.add_argument(
        "--request-deadline",
        type=float,
        default=_SERVE.request_deadline_s,
        help="seconds a request (line, headers, body) has to arrive whole; a slower client is cut off",
    )
    s.add_argument("--allow-failed", action="store_true", help="serve an artifact the export's gate marked failed")
    _expect_digest_flag(s)
    s.add_argument("--verbose", action="store_true", help="log every request")
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser(
        "verify", help="check every file's sha256 and print the manifest digest (the bundle's integrity root)"
    )
    v.add_argument("bundle")
    v.add_argument("--expect", metavar="SHA256", help="refuse unless manifest.json has this sha256 (printed at export)")
    v.set_defaults(func=cmd_verify)

    bn = sub.add_parser("bench", help="P99 latency harness (TTFT, TPOT, gaps, E2E) -> JSON + Markdown + PNG")
    bn.add_argument("bundle", nargs="?")
    bn.add_argument("--artifact", action="append", help="artifact(s) to bench (default: the bundle's default)")
    bn.add_argument("--compare", action="store_true", help="every artifact, interleaved run by run")
    bn.add_argument(
        "--prompts", help="text file, one user turn per line (default: synthetic prompts of --n-prompt tokens)"
    )
    bn.add_argument("--n-prompt", type=int, default=BENCH_N_PROMPT)
    bn.add_argument("--n-gen", type=int, default=BENCH_N_GEN)
    bn.add_argument("--runs", type=int, default=BENCH_RUNS)
    bn.add_argument("--warmup", type=int, default=BENCH_WARMUP)
    bn.add_argument("--threads", type=int)
    bn.add_argument("--seed", type=int, default=0)
    bn.add_argument("--cold", action="store_true", help="include the model load in every run")
    bn.add_argument("--natural-stop", action="store_true", help="stop at EOS (default: fixed --n-gen tokens)")
    bn.add_argument(
        "--prefix-cache", action="store_true", help="keep the system prompt's KV: requests pay only their turn"
    )
    bn.add_argument("--n-turn", type=int, default=32, help="user-turn tokens after the system prompt (--prefix-cache)")
    bn.add_argument("--prefix-state", help="persist / restore the system prompt's KV state (llama.cpp) at this path")
    bn.add_argument("--url", help="bench a running OpenAI-compatible server instead (e.g. http://127.0.0.1:8080/v1)")
    bn.add_argument("--model", help="model name for --url")
    bn.add_argument("--api-key")
    bn.add_argument("--out", default="bench-out")
    bn.add_argument("--quiet", action="store_true")
    _expect_digest_flag(bn)
    bn.set_defaults(func=cmd_bench)

    f = sub.add_parser("feedback", help="the on-device feedback log").add_subparsers(
        dest="feedback_command", required=True
    )
    fe = f.add_parser("export", help="rated completions -> KTO JSONL for edge-kto train")
    fe.add_argument("--db", required=True)
    fe.add_argument("--out", required=True)
    fe.add_argument(
        "--bundle",
        help="only completions this bundle served (a bundle folder/zip, or its manifest sha256): on-policy rows",
    )
    fe.set_defaults(func=cmd_feedback)
    fs = f.add_parser("stats", help="how many completions and ratings")
    fs.add_argument("--db", required=True)
    fs.set_defaults(func=cmd_feedback)
    add_common_flags(p, f"edge-kto-runtime {__version__} (bundle schema {SCHEMA_VERSION})")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes (one policy with ``edge-kto``, see :mod:`.errors`): 0 ok, 1 tool failed, 2 bad input,
    3 gate failed, 130 interrupted; a bug shows its traceback."""
    return run_cli("edge-runtime", build_parser(), argv, lambda a: a.func(a))


if __name__ == "__main__":
    sys.exit(main())
