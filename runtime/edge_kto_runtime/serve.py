"""``edge-runtime serve``: an OpenAI-compatible HTTP server over one loaded bundle, standard library only.

Endpoints: ``POST /v1/chat/completions`` and ``/v1/completions`` (JSON or SSE streaming),
``GET /v1/models``, ``GET /health``, ``POST /v1/feedback``, ``GET /openapi.json``.

Safety by default: binds 127.0.0.1; optional bearer token; request bodies over ``max_body_bytes``
get 413; ``max_tokens`` above the cap gets 400. One model instance: requests are accepted
concurrently and generate one at a time (a lock), so concurrent clients queue, never error.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .feedback import FeedbackStore, UnknownRequest
from .model import ContextOverflow, EdgeModel
from .openapi import ROLES, openapi_spec


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 512
    model_name: str | None = None
    feedback_db: str | None = None  # SQLite path; None = no logging


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


def _num(body: dict, key: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise BadRequest(f"'{key}' must be {'an integer' if integer else 'a number'}", key)
    if not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return v


def _sampling(body: dict, cap: int) -> dict[str, Any]:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > cap:
        raise BadRequest(f"max_tokens {max_tokens} is above this server's cap ({cap})", "max_tokens")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise BadRequest("'stop' must be a string or a list of up to 4 strings", "stop")
    stream, ignore_eos = body.get("stream", False), body.get("ignore_eos", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    if not isinstance(ignore_eos, bool):
        raise BadRequest("'ignore_eos' must be a boolean", "ignore_eos")
    return {"max_new_tokens": _num(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens", 1, cap, min(256, cap), True),
            "temperature": _num(body, "temperature", 0, 2, 0.0), "top_p": _num(body, "top_p", 0, 1, 1.0),
            "seed": _num(body, "seed", -(2**63), 2**63 - 1, None, True), "stop": stop, "stream": stream,
            "ignore_eos": ignore_eos}  # an extension (llama-server, vLLM): fixed-length outputs for benchmarks


def _messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {list(ROLES)}", f"messages[{i}].role")
        c = m.get("content")
        if isinstance(c, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            c = "".join(p["text"] for p in c)
        if not isinstance(c, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
        out.append({"role": m["role"], "content": c})
    return out


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: EdgeModel, cfg: ServeConfig):
        self.model, self.cfg = model, cfg
        self.name = cfg.model_name or str(model.bundle.manifest.get("name") or "edge-kto")
        self.gen_lock = threading.Lock()
        self.feedback = FeedbackStore(cfg.feedback_db) if cfg.feedback_db else None
        self.started = time.time()
        super().__init__((cfg.host, cfg.port), Handler)

    def server_close(self) -> None:
        super().server_close()
        if self.feedback:
            self.feedback.close()


class Handler(BaseHTTPRequestHandler):
    server: EdgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default; the CLI can turn this on
        if getattr(self.server, "verbose", False):
            super().log_message(fmt, *args)

    # ------------------------------------------------------------ plumbing

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None, etype: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": etype, "param": param, "code": None}})

    def _authorized(self) -> bool:
        key = self.server.cfg.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            self._error(401, "missing or wrong bearer token", etype="authentication_error")
            return False
        return True

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest("a JSON body with Content-Length is required", status=411 if length is None else 400)
        n = int(length)
        if n > self.server.cfg.max_body_bytes:
            self.close_connection = True
            raise BadRequest(f"request body of {n} bytes is over the {self.server.cfg.max_body_bytes}-byte limit", status=413)
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    # ------------------------------------------------------------ routes

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/health":
            return self._send(200, {"status": "ok", "model": self.server.name, **self.server.model.info(),
                                    "uptime_s": round(time.time() - self.server.started, 1)})
        if path == "/openapi.json":
            return self._send(200, openapi_spec(self.server.cfg.max_tokens_cap, self.server.cfg.max_body_bytes))
        if not self._authorized():
            return None
        if path == "/v1/models":
            return self._send(200, {"object": "list", "data": [{"id": self.server.name, "object": "model",
                                                                "created": int(self.server.started), "owned_by": "edge-kto"}]})
        return self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        routes = {"/v1/chat/completions": self._chat, "/v1/completions": self._completions, "/v1/feedback": self._feedback}
        if path not in routes:
            return self._error(404, f"no route POST {path}")
        if not self._authorized():
            return None
        try:
            routes[path](self._body())
        except BadRequest as e:
            self._error(e.status, str(e), e.param)
        except ContextOverflow as e:
            self._error(400, str(e), "messages", "context_length_exceeded")

    def _chat(self, body: dict) -> None:
        msgs = _messages(body)
        self._generate(msgs, self.server.model.encode(msgs), _sampling(body, self.server.cfg.max_tokens_cap), chat=True)

    def _completions(self, body: dict) -> None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string", "prompt")
        self._generate(prompt, self.server.model.encode(prompt), _sampling(body, self.server.cfg.max_tokens_cap), chat=False)

    def _feedback(self, body: dict) -> None:
        store = self.server.feedback
        if store is None:
            raise BadRequest("feedback logging is off (start the server with --feedback-db)", status=409)
        rid, good, note = body.get("request_id"), body.get("good"), body.get("note")
        if not isinstance(rid, str) or not isinstance(good, bool) or (note is not None and not isinstance(note, str)):
            raise BadRequest("expected {'request_id': str, 'good': bool, 'note'?: str}")
        try:
            store.add_feedback(rid, good, note)
        except UnknownRequest:
            raise BadRequest(f"unknown request_id {rid!r}", "request_id", status=404) from None
        self._send(200, {"ok": True, "request_id": rid})

    # ------------------------------------------------------------ generation

    def _generate(self, prompt: Any, ids: list[int], s: dict[str, Any], chat: bool) -> None:
        m, srv = self.server.model, self.server
        if not ids:
            raise BadRequest("the prompt is empty", "prompt")
        if len(ids) >= m.backend.n_ctx:
            raise ContextOverflow(f"prompt is {len(ids)} tokens; this model's context holds {m.backend.n_ctx}")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kw = {k: s[k] for k in ("max_new_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")}
        created = int(time.time())
        with srv.gen_lock:
            if s["stream"]:
                text = self._stream(rid, created, ids, kw, chat)
            else:
                c = m.complete(ids, request_id=rid, **kw)
                text = c.text
                choice = ({"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
                          if chat else {"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None})
                self._send(200, {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                                 "model": srv.name, "choices": [choice],
                                 "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": len(c.token_ids),
                                           "total_tokens": c.prompt_tokens + len(c.token_ids)}})
        if srv.feedback is not None and text is not None:
            srv.feedback.log_completion(rid, prompt, text, srv.name)

    def _stream(self, rid: str, created: int, ids: list[int], kw: dict[str, Any], chat: bool) -> str | None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(piece: str | None, finish: str | None, role: bool = False) -> bytes:
            if chat:
                delta = ({"role": "assistant"} if role else {}) | ({"content": piece} if piece is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
            data = {"id": rid, "object": obj, "created": created, "model": self.server.name, "choices": [choice]}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8")

        parts, n = [], 0
        try:
            if chat:
                self.wfile.write(chunk("", None, role=True))
            for ev in self.server.model.stream_events(ids, **kw):
                n += ev.token_id is not None
                if ev.text:
                    parts.append(ev.text)
                    self.wfile.write(chunk(ev.text, None))
                    self.wfile.flush()
            finish = "length" if n >= kw["max_new_tokens"] else "stop"
            self.wfile.write(chunk(None, finish) + b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client left: stop generating
            return None
        return "".join(parts)


def serve(model: EdgeModel, cfg: ServeConfig) -> EdgeServer:
    """Create the server (bound, not yet serving); call ``serve_forever()`` on it."""
    return EdgeServer(model, cfg)
