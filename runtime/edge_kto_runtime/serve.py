"""``edge-runtime serve``: an OpenAI-compatible HTTP server over one loaded bundle, standard library only.

Endpoints: ``POST /v1/chat/completions`` and ``/v1/completions`` (JSON or SSE streaming),
``GET /v1/models``, ``GET /health``, ``POST /v1/feedback``, ``GET /openapi.json``.

Safe by default, because a local server is reachable from every web page the user opens:
binds 127.0.0.1; only loopback / IP-literal ``Host`` values (DNS rebinding sends a domain name;
``allowed_hosts`` adds names); a request with a browser ``Origin`` is refused unless that origin is
in ``cors_origins``; POST bodies must be ``application/json`` (no CSRF through a text/plain form);
optional bearer token compared in constant time. Bodies over ``max_body_bytes`` get 413 (also in
answer to ``Expect: 100-continue``, before the body is sent); ``max_tokens`` above the cap 400.
Every error answers with JSON and closes the connection when the body was not read, so a body can
never be parsed as the next request. Sockets time out (``timeout_s``), a request must arrive whole
within ``request_deadline_s`` (a slow trickle is cut off), and at most ``max_connections`` are
served at once (503 beyond), so stalled clients cannot pin threads.

One model instance: requests are accepted concurrently and generate one at a time (a lock), so
concurrent clients queue, never error. A completion is logged for feedback *before* it is sent.
"""

from __future__ import annotations

import hmac
import io
import json
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import serve_requests as req
from .bundle import manifest_digest
from .chat import TemplateError
from .errors import InvalidInput
from .feedback import FeedbackStore, UnknownRequest
from .model import ContextOverflow, EdgeModel
from .openapi import openapi_spec
from .serve_requests import BadRequest, host_allowed


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_cap: int = 512
    model_name: str | None = None
    feedback_db: str | None = None  # SQLite path; None = no logging
    allowed_hosts: tuple[str, ...] = ()  # Host names besides localhost and IP literals; "*" = any
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    max_connections: int = 128
    # connections one client address may hold at once (None: 3/4 of max_connections), so one address
    # cannot take every slot; the rest stay free for everyone else
    max_connections_per_client: int | None = None
    timeout_s: float = 30.0  # per socket read/write: an idle or stalled client frees its thread
    # a request's line, headers and body must all arrive within this many seconds of the server starting to
    # read it (a client trickling one byte per second cannot hold a connection slot longer than this)
    request_deadline_s: float = 10.0
    backlog: int = 128  # pending connections the kernel queues (the stdlib default, 5, resets bursts)

    def validate(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInput("api_key is empty: pass a real key, or none to serve without authentication")
        if self.max_connections_per_client is not None and self.max_connections_per_client < 1:
            raise InvalidInput("max_connections_per_client must be >= 1")
        for name in ("max_body_bytes", "max_tokens_cap", "max_connections", "backlog"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be >= 1")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be 0..65535, got {self.port!r}")
        for name in ("timeout_s", "request_deadline_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise InvalidInput(f"{name} must be a finite number > 0, got {v!r}")


def check_bindable(host: str, port: int) -> None:
    """Bind and release ``(host, port)`` now: a port in use is a clear error before a slow model load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds (TIME_WAIT is fine)
        try:
            s.bind((host, port))
        except OSError as e:
            raise InvalidInput(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: EdgeModel, cfg: ServeConfig):
        cfg.validate()
        self.model, self.cfg = model, cfg
        self.name = cfg.model_name or str(model.bundle.manifest.get("name") or "edge-kto")
        self.gen_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(cfg.max_connections)
        self.per_client = cfg.max_connections_per_client or max(1, cfg.max_connections * 3 // 4)
        self.by_client: dict[str, int] = {}
        self.by_client_lock = threading.Lock()
        digest = manifest_digest(model.bundle.root) if cfg.feedback_db else None
        self.feedback = FeedbackStore(cfg.feedback_db, bundle=digest) if cfg.feedback_db else None
        self.started = time.time()
        self.verbose = False
        self.request_queue_size = cfg.backlog
        if ":" in cfg.host:
            self.address_family = socket.AF_INET6
        super().__init__((cfg.host, cfg.port), Handler)

    def _busy(self, request: Any, why: str) -> None:
        """503 now rather than queue a thread."""
        body = json.dumps({"error": {"message": f"{why}; retry", "type": "server_busy"}}).encode()
        try:
            request.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
        except OSError:
            pass
        self.shutdown_request(request)

    def _client_slot(self, addr: str, delta: int) -> bool:
        """Count ``addr``'s open connections; False (nothing counted) when it already holds its share."""
        with self.by_client_lock:
            n = self.by_client.get(addr, 0)
            if delta > 0 and n >= self.per_client:
                return False
            if n + delta:
                self.by_client[addr] = n + delta
            else:
                self.by_client.pop(addr, None)
            return True

    def process_request(self, request: Any, client_address: Any) -> None:
        addr = str(client_address[0])
        if not self._client_slot(addr, +1):
            return self._busy(request, "too many open connections from this address")
        if not self.slots.acquire(blocking=False):  # at the cap
            self._client_slot(addr, -1)
            return self._busy(request, "too many open connections")
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            self._client_slot(addr, -1)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()
            self._client_slot(str(client_address[0]), -1)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is routine, not a traceback; anything else is printed."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        if self.feedback:
            self.feedback.close()


class _DeadlineReader(io.RawIOBase):
    """The socket's read side with the handler's request deadline: each read waits at most the time
    left (and never longer than ``timeout_s``); past the deadline it raises TimeoutError, which closes
    the connection (``EdgeServer.handle_error`` treats it as routine)."""

    def __init__(self, sock: socket.socket, handler: "Handler"):
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        timeout = self.handler.server.cfg.timeout_s
        left = self.handler._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive whole within the request deadline")
        self.sock.settimeout(min(timeout, left))
        try:
            return self.sock.recv_into(b)
        finally:
            self.sock.settimeout(timeout)  # writes keep the per-operation timeout


class Handler(BaseHTTPRequestHandler):
    server: EdgeServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.cfg.timeout_s  # StreamRequestHandler applies it to the socket
        super().setup()
        self._deadline = time.monotonic() + self.server.cfg.request_deadline_s
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        """Each request gets ``request_deadline_s`` to arrive whole (line, headers, body)."""
        self._deadline = time.monotonic() + self.server.cfg.request_deadline_s
        super().handle_one_request()

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet by default; the CLI can turn this on
        if self.server.verbose:
            super().log_message(fmt, *args)

    # ------------------------------------------------------------ plumbing

    def _cors(self) -> dict[str, str]:
        origin = self.headers.get("Origin")
        if origin and origin in self.server.cfg.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", errors="replace")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if not self._body_read:  # an unread body must never be parsed as the next request
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        for k, v in {**self._cors(), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self._responded = True
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None, etype: str = "invalid_request_error") -> None:
        self._send(status, {"error": {"message": message, "type": etype, "param": param, "code": None}})

    def _admit(self, post: bool) -> int | None:
        """Host, Origin, auth, Content-Type and Content-Length, in that order; the body length when admitted."""
        self._body_read = self.headers.get("Content-Length") is None and self.headers.get("Transfer-Encoding") is None
        self._responded = False
        cfg = self.server.cfg
        for name in ("Host", "Content-Length", "Content-Type", "Authorization"):
            if len(self.headers.get_all(name) or []) > 1:  # RFC 9112: which one counts is ambiguous
                self._body_read = False  # close: the body's length is not known for sure
                self._error(400, f"the {name} header appears more than once")
                return None
        if not host_allowed(self.headers.get("Host"), cfg.allowed_hosts):
            self._error(
                403,
                f"Host {self.headers.get('Host')!r} is not allowed (a DNS-rebinding guard); "
                "start the server with --allowed-host NAME to serve that name",
                etype="forbidden",
            )
            return None
        origin = self.headers.get("Origin")
        if (origin and origin not in cfg.cors_origins) or (
            not origin and self.headers.get("Sec-Fetch-Site") == "cross-site"
        ):
            self._error(
                403,
                f"cross-origin request from {origin or 'another site'} refused "
                "(allow a web app with --cors-origin ORIGIN)",
                etype="forbidden",
            )
            return None
        if cfg.api_key and not self._authorized(cfg.api_key):
            self._error(401, "missing or wrong bearer token", etype="authentication_error")
            return None
        if not post:
            return 0
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            self._error(415, f"Content-Type must be application/json, got {ctype or 'none'!r}")
            return None
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "chunked bodies are not accepted: send Content-Length")
            return None
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self._error(411 if length is None else 400, "a JSON body with a decimal Content-Length is required")
            return None
        if int(length) > cfg.max_body_bytes:
            self._error(413, f"request body of {length} bytes is over the {cfg.max_body_bytes}-byte limit")
            return None
        return int(length)

    def _authorized(self, key: str) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def handle_expect_100(self) -> bool:
        """Answer ``Expect: 100-continue`` only when the request would be admitted (no 100 before a 413)."""
        if self._admit(post=self.command == "POST") is None:
            return False
        return super().handle_expect_100()

    def _read_json(self, n: int) -> dict:
        raw = self.rfile.read(n)
        if len(raw) < n:
            self.close_connection = True
            raise BadRequest(f"the body ended after {len(raw)} of {n} bytes")
        self._body_read = True
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _guarded(self, route: Any, *args: Any) -> None:
        """Run a route; every failure becomes a JSON error response (never a dropped connection)."""
        try:
            route(*args)
        except BadRequest as e:
            self._fail(e.status, str(e), e.param)
        except ContextOverflow as e:
            self._fail(400, str(e), "messages", "context_length_exceeded")
        except TemplateError as e:  # the chat template's raise_exception, e.g. roles out of order
            self._fail(400, f"the chat template refused these messages: {e}", "messages")
        except (TimeoutError, ConnectionError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bug must still answer, and the server must live on
            self.close_connection = True
            self._fail(500, f"internal error: {type(e).__name__}", etype="server_error")

    def _fail(self, status: int, message: str, param: str | None = None, etype: str = "invalid_request_error") -> None:
        if self._responded:  # headers already out (streaming): all we can do is close
            self.close_connection = True
            return
        try:
            self._error(status, message, param, etype)
        except OSError:
            self.close_connection = True

    # ------------------------------------------------------------ routes

    def do_OPTIONS(self) -> None:  # noqa: N802 - CORS preflight, only for configured origins
        self._body_read, self._responded = True, False
        origin = self.headers.get("Origin")
        if (
            not origin
            or origin not in self.server.cfg.cors_origins
            or not host_allowed(self.headers.get("Host"), self.server.cfg.allowed_hosts)
        ):
            return self._error(
                403, "CORS preflight refused (allow a web app with --cors-origin ORIGIN)", etype="forbidden"
            )
        self.send_response(204)
        for k, v in {
            **self._cors(),
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
            "Content-Length": "0",
        }.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path in ("/health", "/openapi.json"):  # no auth, nothing private: status and the API's shape
            self._body_read = self.headers.get("Content-Length") in (None, "0")
            self._responded = False
            if path == "/health":
                info = {k: v for k, v in self.server.model.info().items() if k != "bundle"}  # no local paths
                return self._send(
                    200,
                    {
                        # a gate-failed artifact served with --allow-failed says so to every client
                        "status": "ok" if info["gate"] != "failed" else "degraded: the export's alignment gate failed",
                        "model": self.server.name,
                        **info,
                        "uptime_s": round(time.time() - self.server.started, 1),
                    },
                )
            return self._send(200, openapi_spec(self.server.cfg.max_tokens_cap, self.server.cfg.max_body_bytes))
        if self._admit(post=False) is None:
            return None
        if path == "/v1/models":
            return self._send(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.server.name,
                            "object": "model",
                            "created": int(self.server.started),
                            "owned_by": "edge-kto",
                        }
                    ],
                },
            )
        return self._error(404, f"no route GET {path}")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/feedback": self._feedback,
        }
        n = self._admit(post=True)
        if n is None:
            return None
        if path not in routes:
            return self._error(404, f"no route POST {path}")
        self._guarded(lambda: routes[path](self._read_json(n)))

    def _chat(self, body: dict) -> None:
        msgs = req.messages(body)
        self._generate(
            msgs, self.server.model.encode(msgs), req.sampling(body, self.server.cfg.max_tokens_cap), chat=True
        )

    def _completions(self, body: dict) -> None:
        prompt = req.prompt(body)
        self._generate(
            prompt, self.server.model.encode(prompt), req.sampling(body, self.server.cfg.max_tokens_cap), chat=False
        )

    def _feedback(self, body: dict) -> None:
        store = self.server.feedback
        if store is None:
            raise BadRequest("feedback logging is off (start the server with --feedback-db)", status=409)
        rid, good, note = req.feedback(body)
        try:
            store.add_feedback(rid, good, note)
        except UnknownRequest:
            raise BadRequest(f"unknown request_id {rid!r}", "request_id", status=404) from None
        self._send(200, {"ok": True, "request_id": rid})

    # ------------------------------------------------------------ generation

    def _log(self, rid: str, prompt: Any, text: str) -> None:
        if self.server.feedback is not None:
            self.server.feedback.log_completion(rid, prompt, text, self.server.name)

    def _generate(self, prompt: Any, ids: list[int], s: dict[str, Any], chat: bool) -> None:
        m, srv = self.server.model, self.server
        if not ids:
            raise BadRequest("the prompt is empty", "prompt")
        if len(ids) >= m.n_ctx:
            raise ContextOverflow(f"prompt is {len(ids)} tokens; this model's context holds {m.n_ctx}")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        kw = {k: s[k] for k in ("max_new_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos")}
        created = int(time.time())
        if s["stream"]:
            return self._stream(rid, created, prompt, ids, kw, chat)
        with srv.gen_lock:
            c = m.complete(ids, request_id=rid, **kw)
        self._log(rid, prompt, c.text)  # committed before the client can see the id
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
            if chat
            else {"index": 0, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        )
        self._send(
            200,
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": srv.name,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": len(c.token_ids),
                    "total_tokens": c.prompt_tokens + len(c.token_ids),
                },
            },
        )

    def _stream(self, rid: str, created: int, prompt: Any, ids: list[int], kw: dict[str, Any], chat: bool) -> None:
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for k, v in self._cors().items():
            self.send_header(k, v)
        self.end_headers()
        self._responded = True
        self.close_connection = True

        def chunk(piece: str | None, finish: str | None, role: bool = False) -> bytes:
            if chat:
                delta = ({"role": "assistant"} if role else {}) | ({"content": piece} if piece is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
            data = {"id": rid, "object": obj, "created": created, "model": self.server.name, "choices": [choice]}
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode("utf-8", errors="replace")

        parts, finish = [], "stop"
        try:
            if chat:
                self.wfile.write(chunk("", None, role=True))
            for ev in self._generated(ids, kw):
                finish = ev.finish_reason or finish
                if ev.text:
                    parts.append(ev.text)
                    self.wfile.write(chunk(ev.text, None))
                    self.wfile.flush()
            self._log(rid, prompt, "".join(parts))  # before the final chunk: a thumbs-up right after works
            self.wfile.write(chunk(None, finish) + b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):  # the client left or stalled: stop generating
            return

    def _generated(self, ids: list[int], kw: dict[str, Any]) -> Any:
        """Stream events from a producer thread that holds the generation lock only while it
        generates: a client that reads slowly delays its own stream, never the queue behind it."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        end, stop = object(), threading.Event()

        def produce() -> None:
            try:
                with self.server.gen_lock:
                    for ev in self.server.model.stream_events(ids, **kw):
                        events.put(ev)
                        if stop.is_set():
                            break
            except BaseException as e:  # noqa: BLE001 - handed to the writer, raised there
                events.put(e)
            finally:
                events.put(end)

        threading.Thread(target=produce, daemon=True).start()
        try:
            while (ev := events.get()) is not end:
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
        finally:
            stop.set()


def serve(model: EdgeModel, cfg: ServeConfig) -> EdgeServer:
    """Create the server (bound, not yet serving); call ``serve_forever()`` on it."""
    return EdgeServer(model, cfg)
