"""Concurrent clients against ``edge-runtime serve``: errors (must be 0) and how long a request
waits in the queue, since one model generates one request at a time.

The server runs as its own process (the real CLI, 127.0.0.1, default connection cap and listen
backlog); each client thread sends its requests back to back over fresh connections, with a
fixed output length (``ignore_eos``), so the spread of latencies is the queue.

    python benchmarks/serve_load.py --bundle BUNDLE [--clients 64 --requests 10 --max-tokens 8]
    python benchmarks/serve_load.py --bundle BUNDLE --quick     # 16 x 4 (CI)

Reported: errors by kind, requests/s, and latency p50/p90/p99/max; the anchor in the same run is
one client alone (the latency without a queue), and the p99 is given as a ratio of it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

BODY = {
    "messages": [{"role": "user", "content": "Give me one tip for a smart lamp."}],
    "temperature": 0,
    "ignore_eos": True,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one(port: int, max_tokens: int) -> tuple[float, str | None]:
    t = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        c.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**BODY, "max_tokens": max_tokens}),
            {"Content-Type": "application/json"},
        )
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            return time.perf_counter() - t, f"HTTP {r.status}"
        if not json.loads(data)["choices"][0]["message"]["content"] and max_tokens > 0:
            return time.perf_counter() - t, "empty answer"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return time.perf_counter() - t, type(e).__name__
    return time.perf_counter() - t, None


def _trickle(port: int, stop: threading.Event, counts: Counter, lock: threading.Lock) -> None:
    """A slowloris client: a request line, then one header byte per second, reconnecting whenever the
    server cuts it off (counted), until ``stop``."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                while not stop.wait(1.0):
                    s.sendall(b"x")
        except OSError:
            with lock:
                counts["cut off"] += 1


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]  # nearest rank


def run_load(port: int, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    lat: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            dt, err = _one(port, max_tokens)
            with lock:
                lat.append(dt)
                if err:
                    errors[err] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {
        "clients": clients,
        "requests_per_client": requests,
        "requests": len(lat),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wall_s": wall,
        "requests_per_s": len(lat) / wall,
        "p50_s": _pct(lat, 50),
        "p90_s": _pct(lat, 90),
        "p99_s": _pct(lat, 99),
        "max_s": max(lat),
    }


def _wait_ready(port: int, proc: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("server did not come up")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--artifact")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trickle", type=int, default=0, help="slow-trickle connections running beside the load")
    ap.add_argument("--quick", action="store_true", help="16 clients x 4 requests")
    ap.add_argument("--out", default="benchmarks/results/serve_load.json")
    a = ap.parse_args()
    if a.quick:
        a.clients, a.requests = 16, 4
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "edge_kto_runtime.cli",
        "serve",
        a.bundle,
        "--port",
        str(port),
        "--no-feedback",
        "--threads",
        str(a.threads),
        "--allow-failed",
    ] + (["--artifact", a.artifact] if a.artifact else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, cut, lock = threading.Event(), Counter(), threading.Lock()
    tricklers = [threading.Thread(target=_trickle, args=(port, stop, cut, lock)) for _ in range(a.trickle)]
    try:
        _wait_ready(port, proc)
        alone = run_load(port, 1, max(5, a.requests), a.max_tokens)
        for t in tricklers:
            t.start()
        loaded = run_load(port, a.clients, a.requests, a.max_tokens)
    finally:
        stop.set()
        for t in tricklers:
            t.join()
        proc.terminate()
        proc.wait(timeout=30)
    loaded["trickle_connections"] = a.trickle
    loaded["trickle_cut_off"] = cut["cut off"]  # times the server's request deadline closed a trickler
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "bundle": a.bundle,
        "max_tokens": a.max_tokens,
        "alone": alone,
        "loaded": loaded,
        "p99_vs_alone_p50": loaded["p99_s"] / alone["p50_s"],
    }
    print(
        "| run | clients x requests | errors | req/s | p50 s | p90 s | p99 s | max s "
        "|\n|---|---|---|---|---|---|---|---|"
    )
    for name, r in (("one client (anchor)", alone), ("loaded", loaded)):
        print(
            f"| {name} | {r['clients']} x {r['requests_per_client']} | {r['errors']} | {r['requests_per_s']:.1f} | "
            f"{r['p50_s']:.3f} | {r['p90_s']:.3f} | {r['p99_s']:.3f} | {r['max_s']:.3f} |"
        )
    print(
        f"p99 under load = {report['p99_vs_alone_p50']:.1f}x one request alone (the queue: one model, one "
        f"request at a time)"
    )
    if a.trickle:
        print(f"{a.trickle} slow-trickle connections beside the load, cut off {cut['cut off']} times")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if loaded["errors"] == 0 and alone["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
