"""The device feedback loop, closed inside the pipeline (``rounds: {source: device}``).

The current student is exported to a bundle and served by the real ``edge-runtime serve`` on
127.0.0.1; a simulated user asks the training prompts over HTTP, rates every answer with the
task's verifier through the real ``/v1/feedback`` endpoint (thumbs up / down, as an app would),
and the log is exported with ``edge-runtime feedback export --bundle``: only the rows this bundle
served, each carrying its manifest sha256. The round then trains KTO on those rows.

Resuming after ``kill -9``: every rating's note names its (prompt, sample), so a rerun asks only
what has no rating yet; an answer that was logged but not rated before the kill is never exported
(the export keeps rated rows), and asking again with the same seed gives the same answer. No
feedback row is lost or duplicated.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_kto_runtime.errors import ToolError, UserError
from edge_kto_runtime.serve_requests import SEED_MAX

from ..jsonl import iter_jsonl

SEED_MAX_PLUS_ONE = SEED_MAX + 1  # per-request seeds are taken modulo this: always a seed the server accepts


@dataclass
class UserPrompt:
    id: str
    prompt: Any  # chat messages
    reference: Any
    verifier: str


def user_prompts(candidates: Path) -> list[UserPrompt]:
    """The training prompts (one per prompt id) with what the verifier needs, from the teacher's candidates."""
    seen: dict[str, UserPrompt] = {}
    for _, r in iter_jsonl(candidates):
        pid = str(r.get("prompt_id", r["id"]))
        if pid not in seen:
            seen[pid] = UserPrompt(pid, r["prompt"], r.get("reference"), r.get("verifier") or "contains_all")
    return list(seen.values())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when the pipeline dies (kill -9 included), never lingers."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class RuntimeServer:
    """``edge-runtime serve BUNDLE`` in a child process, on 127.0.0.1, logging feedback to ``db``."""

    def __init__(self, bundle: Path, db: Path, log: Path, threads: int | None = None, max_tokens: int = 0):
        """``max_tokens``: the round's answer budget; the server's cap is raised to it (never below its default)."""
        from edge_kto_runtime.serve import ServeConfig

        self.port = _free_port()
        cmd = [sys.executable, "-m", "edge_kto_runtime.cli", "serve", str(bundle), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--feedback-db", str(db)] + (["--threads", str(threads)] if threads else [])
        cmd += ["--max-tokens-cap", str(max(ServeConfig.max_tokens_cap, max_tokens))]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"edge-runtime serve exited with {self.proc.returncode}; see {self._log.name}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise UserError(f"edge-runtime serve did not answer /health within {timeout:.0f} s; see {self._log.name}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _rated_notes(db: Path, digest: str) -> set[str]:
    from edge_kto_runtime.feedback import FeedbackStore

    if not db.is_file():
        return set()
    store = FeedbackStore(db, create=False)
    try:
        return {r["note"] for r in store.rows(digest) if r.get("note")}
    finally:
        store.close()


def ask_and_rate(
    base: str,
    prompts: list[UserPrompt],
    samples: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    done: set[str],
    progress: bool = True,
) -> int:
    """The simulated user: each prompt ``samples`` times over HTTP, each answer rated by the verifier."""
    import httpx
    from tqdm.auto import tqdm

    from ..label.verifiers import get_verifier

    todo = [(p, k) for p in prompts for k in range(samples) if f"{p.id}#s{k}" not in done]
    verifiers: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=600) as http:
        for p, k in tqdm(todo, desc="device feedback", unit="answer", disable=not progress):
            body = {
                "messages": p.prompt,
                "temperature": temperature,
                "max_tokens": max_tokens,
                # the same answer when asked again after a kill; 2^32-1 is llama.cpp's "random", never sent
                "seed": zlib.crc32(f"{seed}:{p.id}:{k}".encode()) % SEED_MAX_PLUS_ONE,
            }
            r = http.post("/v1/chat/completions", json=body)
            _refused(r, p.id)
            ans = r.json()
            text = ans["choices"][0]["message"]["content"]
            verify = verifiers.setdefault(p.verifier, get_verifier(p.verifier))
            good = bool(verify(text, p.reference))
            f = http.post("/v1/feedback", json={"request_id": ans["id"], "good": good, "note": f"{p.id}#s{k}"})
            _refused(f, p.id)
    return len(todo)


def _refused(r: Any, prompt_id: str) -> None:
    """A request the round's own server refused: name the training prompt and give the server's reason."""
    if r.status_code < 400:
        return
    try:
        reason = r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        reason = r.text[:500]
    err = UserError if r.status_code < 500 else ToolError
    raise err(f"training prompt {prompt_id!r}: the round's edge-runtime serve answered {r.status_code}: {reason}")


def collect(
    model_dir: Path,
    candidates: Path,
    d: Path,
    samples: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    quant: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Export ``model_dir``, serve it, ask and rate every training prompt, export the thumbs; returns
    the path of the KTO rows (this bundle's only) and counts."""
    from edge_kto_runtime.bundle import manifest_digest

    from ..export import ExportConfig, run_export

    bundle = d / "bundle"
    if not (bundle / "manifest.json").is_file():  # the round's student as a device would get it
        run_export(
            ExportConfig(source=str(model_dir), out=str(bundle), gguf=[quant], onnx=False, check=False, force=True),
            progress=progress,
        )
    digest = manifest_digest(bundle)
    db, rows = d / "feedback.sqlite", d / "feedback.jsonl"
    prompts = user_prompts(candidates)
    done = _rated_notes(db, digest)
    asked = 0
    if len(done) < len(prompts) * samples:
        server = RuntimeServer(bundle, db, d / "serve.log", max_tokens=max_tokens)
        try:
            server.wait_ready()
            asked = ask_and_rate(server.base, prompts, samples, temperature, max_tokens, seed, done, progress)
        finally:
            server.close()
    cmd = [sys.executable, "-m", "edge_kto_runtime.cli", "feedback", "export", "--db", str(db), "--out", str(rows)]
    p = subprocess.run([*cmd, "--bundle", str(bundle)], capture_output=True, text=True)
    if p.returncode != 0:
        raise UserError(f"edge-runtime feedback export failed: {p.stderr.strip()[-2000:]}")
    n = sum(1 for _ in iter_jsonl(rows))
    return {"rows": str(rows), "bundle": digest, "rated": n, "asked_this_run": asked, "resumed_with": len(done)}


def device_rows(path: Path, round_index: int) -> list[dict[str, Any]]:
    """The exported thumbs as training rows: the rating's note gives back the prompt id."""
    out = []
    for _, r in iter_jsonl(path):
        pid = str(r.get("note", "")).rsplit("#s", 1)[0] or r["id"]
        out.append({**r, "prompt_id": pid, "round": round_index})
    return out
