"""Each teacher backend generates for real: transformers, llama.cpp, and HTTP against a real
llama-cpp-python server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import free_port

from edge_kto.teacher import GenRequest, SamplingParams, TeacherConfig, make_teacher
from edge_kto.teacher.openai_http import TeacherHTTPError

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
JAPAN = [{"role": "user", "content": "Which city is the capital of Japan?"}]


@pytest.mark.integration
def test_hf_teacher_batches_and_samples_n(tiny_model_dir):
    with make_teacher(TeacherConfig(kind="hf", model=str(tiny_model_dir), batch_size=2)) as t:
        reqs = [GenRequest("a", FRANCE, [0, 1, 2]), GenRequest("b", [{"role": "user", "content": "Hi"}], [0, 1, 2])]
        outs = t.generate(reqs, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1))
        assert [len(o) for o in outs] == [3, 3]
        assert all(isinstance(s, str) for o in outs for s in o)
        assert len(set(outs[0])) > 1, "sampling at temperature 1 on a random model should differ between samples"
        greedy = t.generate(reqs[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=8))
        assert greedy == t.generate(reqs[:1], SamplingParams(n=1, temperature=0.0, max_new_tokens=8))


@pytest.mark.real_model
def test_llamacpp_teacher_answers_with_real_model(smol):
    with make_teacher(TeacherConfig(kind="gguf", model=str(smol.gguf), n_ctx=1024, n_threads=2)) as t:
        greedy = t.generate([GenRequest("q", JAPAN, [0])], SamplingParams(n=1, temperature=0.0, max_new_tokens=16))
        assert "Tokyo" in greedy[0][0]
        sampled = t.generate([GenRequest("q", FRANCE, [0, 1])], SamplingParams(n=2, temperature=0.9, max_new_tokens=16))
        again = t.generate([GenRequest("q", FRANCE, [0, 1])], SamplingParams(n=2, temperature=0.9, max_new_tokens=16))
        assert sampled == again, "per-sample seeds make sampling reproducible"


@pytest.fixture(scope="module")
def llama_server(smol, tmp_path_factory):
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+b")  # a PIPE would fill and block the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smol.gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "1024",
            "--n_threads",
            "2",
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"llama_cpp.server exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("llama_cpp.server did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.real_model
def test_openai_teacher_against_real_local_server(llama_server):
    cfg = TeacherConfig(kind="openai", model="smollm2", base_url=llama_server, concurrency=2, timeout_s=60)
    with make_teacher(cfg) as t:
        reqs = [GenRequest("a", JAPAN, [0]), GenRequest("b", [{"role": "user", "content": "Name a color."}], [0, 1])]
        outs = t.generate(reqs, SamplingParams(n=2, temperature=0.0, max_new_tokens=16))
        assert [len(o) for o in outs] == [1, 2]
        assert "Tokyo" in outs[0][0]
        assert all(s.strip() for o in outs for s in o)


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 for the first ``fail`` POSTs, then a valid chat completion."""

    fail = 2
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        if len(type(self).seen) <= type(self).fail:
            self.send_response(503)
            self.end_headers()
            return
        if body.get("model") == "bad":
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "unknown model"}')
            return
        payload = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": f"ok seed={body['seed']}"}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *a):
        pass


def test_openai_teacher_retries_with_backoff_and_fails_fast_on_4xx():
    _Flaky.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    try:
        with make_teacher(TeacherConfig(kind="openai", model="m", base_url=base, concurrency=1, max_retries=3)) as t:
            out = t.generate([GenRequest("a", FRANCE, [0])], SamplingParams(n=1, max_new_tokens=4))
            assert out[0][0].startswith("ok seed=") and len(_Flaky.seen) == 3
            assert _Flaky.seen[-1]["messages"] == FRANCE and _Flaky.seen[-1]["max_tokens"] == 4
        with make_teacher(TeacherConfig(kind="openai", model="bad", base_url=base, concurrency=1, max_retries=3)) as t:
            n_before = len(_Flaky.seen)
            with pytest.raises(TeacherHTTPError, match="HTTP 400"):
                t.generate([GenRequest("a", FRANCE, [0])], SamplingParams(n=1, max_new_tokens=4))
            assert len(_Flaky.seen) == n_before + 1, "a 4xx is a config error: no retries"
    finally:
        srv.shutdown()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with make_teacher(TeacherConfig(kind="openai", model="m", base_url=dead, max_retries=1, timeout_s=2)) as t:
        with pytest.raises(TeacherHTTPError, match="gave up after 2 attempts"):
            t.generate([GenRequest("a", FRANCE, [0])], SamplingParams(n=1, max_new_tokens=4))
