"""``edge-runtime``: the device-side command line (one subcommand per job)."""

from __future__ import annotations

import argparse
import json
import sys

from . import SCHEMA_VERSION, __version__
from .bundle import BundleError


def cmd_check(a: argparse.Namespace) -> int:
    from .bundle import open_bundle
    from .check import markdown_table, run_device_check

    results = run_device_check(a.bundle, a.artifact, n_threads=a.threads)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        print("device-side alignment check (fp values from golden.jsonl; KL over the fp top-k + rest):")
        print(markdown_table(results))
        server = (open_bundle(a.bundle, verify=False).manifest.get("alignment") or {}).get("per_artifact", {})
        for r in results:
            s = server.get(r["artifact"])
            if s:
                print(f"{r['artifact']}: server KLD(full) {s['kld_mean']:.4f} / top-k {s['kld_topk_mean']:.4f}, here top-k "
                      f"{r['kld_mean']:.4f}; top-1 server {s['top1_agree']:.3f} here {r['top1_agree']:.3f}")
    for r in results:
        if not r["passed"]:
            print(f"FAILED {r['artifact']}: {'; '.join(r['failures'])}", file=sys.stderr)
    return 0 if all(r["passed"] for r in results) else 3


def cmd_generate(a: argparse.Namespace) -> int:
    from .model import load

    with load(a.bundle, backend=a.backend, artifact=a.artifact, n_threads=a.threads) as m:
        prompt = [{"role": "user", "content": a.prompt}] if not a.raw else a.prompt
        for piece in m.stream(prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed):
            print(piece, end="", flush=True)
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-runtime", description="Run edge-kto bundles offline (no torch).")
    p.add_argument("--version", action="version", version=f"edge-kto-runtime {__version__} (bundle schema {SCHEMA_VERSION})")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate (streamed) from a bundle")
    g.add_argument("bundle")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="use the prompt as raw text, not a chat user turn")
    g.add_argument("--backend", default="auto", choices=["auto", "llama.cpp", "onnx"])
    g.add_argument("--artifact")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--threads", type=int)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("check", help="re-run the alignment check on this device (exit 3 on failure)")
    c.add_argument("bundle")
    c.add_argument("--artifact", action="append")
    c.add_argument("--threads", type=int)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except (BundleError, ValueError, ImportError, FileNotFoundError) as e:
        print(f"edge-runtime: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
