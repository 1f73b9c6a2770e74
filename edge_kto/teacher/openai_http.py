"""A teacher behind any OpenAI-compatible endpoint (vLLM, SGLang, llama-server, ...).

One request per sample (``n`` > 1 is not supported by every server), each with its own
seed; up to ``concurrency`` in flight so the server's continuous batching is used; retries
with exponential backoff on connection errors, timeouts, 429 and 5xx. A 4xx other than 429
is a configuration error and fails at once.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from edge_kto_runtime.errors import InvalidInput, ToolError

from .base import GenRequest, SamplingParams, Teacher, TeacherConfig, sample_seed

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class TeacherHTTPError(ToolError):
    pass


class OpenAITeacher(Teacher):
    def __init__(self, cfg: TeacherConfig):
        if not cfg.base_url:
            raise InvalidInput("openai teacher needs base_url, e.g. http://127.0.0.1:8000/v1")
        self.cfg = cfg
        self.name = cfg.display_name()
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.batch_size = max(1, cfg.concurrency) * 2
        headers = {}
        key = os.environ.get(cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(
            timeout=cfg.timeout_s, headers=headers, limits=httpx.Limits(max_connections=max(1, cfg.concurrency))
        )
        self.pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="teacher-http")

    def _post(self, body: dict) -> str:
        delay = 0.5
        for attempt in range(self.cfg.max_retries + 1):
            try:
                resp = self.client.post(self.url, json=body)
                if resp.status_code == 200:
                    return self._content(resp)
                if resp.status_code not in RETRY_STATUS:
                    raise TeacherHTTPError(f"{self.url}: HTTP {resp.status_code}: {resp.text[:500]}")
                err: Exception = TeacherHTTPError(f"HTTP {resp.status_code}")
            except (httpx.TransportError, httpx.TimeoutException) as e:
                err = e
            if attempt == self.cfg.max_retries:
                raise TeacherHTTPError(f"{self.url}: gave up after {attempt + 1} attempts: {err!r}") from err
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def _content(self, resp: httpx.Response) -> str:
        """The answer text of a 200 response, or an error that shows what the server sent instead."""
        try:
            data = resp.json()
        except ValueError:
            raise TeacherHTTPError(
                f"{self.url}: HTTP 200 but not JSON ({resp.headers.get('content-type', '?')}): "
                f"{resp.text[:200]!r} — is base_url the API root (…/v1)?"
            ) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise TeacherHTTPError(f"{self.url}: HTTP 200 without a choice: {str(data)[:200]}")
        msg = choices[0].get("message")
        content = msg.get("content") if isinstance(msg, dict) else None
        if content is not None and not isinstance(content, str):
            raise TeacherHTTPError(f"{self.url}: choices[0].message.content is {type(content).__name__}, expected text")
        return content or ""

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        futures = []
        for r in requests:
            row = []
            for idx in r.sample_indices:
                body = {
                    "model": self.cfg.model,
                    "messages": r.messages,
                    "max_tokens": params.max_new_tokens,
                    "temperature": params.temperature,
                    "top_p": params.top_p if params.temperature > 0 else 1.0,
                    "seed": sample_seed(params.seed, r.key, idx),
                    "n": 1,
                }
                row.append(self.pool.submit(self._post, body))
            futures.append(row)
        return [[f.result().strip() for f in row] for row in futures]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
