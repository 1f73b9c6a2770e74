"""``edge-runtime bench --url``: the same per-run timings against a running OpenAI-compatible server
(ours, llama-server, vLLM, ...) over streaming chat completions — how a phone app's server path is
measured. Standard library only (http.client), one request at a time."""

from __future__ import annotations

import http.client
import json
import random
import time
from typing import Any
from urllib.parse import urlparse

from .errors import ToolError

WORDS = "the device app light hub sensor battery menu reset network update schedule door lamp code".split()


def _stream_once(
    url: str, model: str | None, prompt: str, n_gen: int, api_key: str | None, timeout: float
) -> dict[str, Any]:
    u = urlparse(url.rstrip("/"))
    conn = (http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection)(
        u.hostname, u.port, timeout=timeout
    )
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": n_gen,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }  # honoured by llama-server, vLLM and edge-runtime; others may stop early
    if model:
        body["model"] = model
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    t0 = time.perf_counter()
    try:
        conn.request("POST", f"{u.path}/chat/completions", body=json.dumps(body), headers=headers)
        resp = conn.getresponse()
    except OSError as e:  # refused, reset, timed out: the server's failure, not the caller's input
        raise ToolError(f"{url}: {e}") from None
    if resp.status != 200:
        raise ToolError(f"{url}: HTTP {resp.status}: {resp.read()[:300]!r}")
    times: list[float] = []
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            break
        choices = json.loads(line[6:]).get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            times.append(time.perf_counter() - t0)
    e2e = time.perf_counter() - t0
    conn.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {
        "ttft": times[0] if times else e2e,
        "e2e": e2e,
        "n_gen": len(times),
        "n_prompt": len(prompt.split()),
        "tpot": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None,
        "gaps": gaps,
    }


def run_http_bench(
    url: str,
    n_prompt_words: int,
    n_gen: int,
    runs: int,
    warmup: int,
    seed: int = 0,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 300.0,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(warmup + runs):
        prompt = " ".join(rng.choice(WORDS) for _ in range(n_prompt_words))
        r = _stream_once(url, model, prompt, n_gen, api_key, timeout)
        if i >= warmup:
            out.append(r)
    return out
