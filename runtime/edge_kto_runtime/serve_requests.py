"""What the server accepts: request bodies checked field by field, before anything runs.

Every refusal is a :class:`BadRequest` that names the field (OpenAI's ``param``), so a client
sees a 4xx it can act on, never a dropped connection or a 500 from deep inside generation.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .defaults import DEVICE_MAX_NEW_TOKENS
from .errors import InvalidInput
from .openapi import ROLES

SEED_MAX = 2**32 - 2  # llama.cpp seeds are uint32 and 0xFFFFFFFF means "random": refuse, never truncate


class BadRequest(InvalidInput):
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


def _unsupported(body: dict) -> None:
    """OpenAI fields this server does not implement: refused by name, never silently ignored."""
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise BadRequest("'n' must be 1 (one choice per request)", "n")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise BadRequest("'logprobs' is not supported by this server", "logprobs")
    if body.get("echo") not in (None, False):
        raise BadRequest("'echo' is not supported by this server", "echo")
    if body.get("best_of") not in (None, 1):
        raise BadRequest("'best_of' must be 1", "best_of")


def sampling(body: dict, cap: int) -> dict[str, Any]:
    _unsupported(body)
    given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
    if len(given) == 2 and body["max_completion_tokens"] != body["max_tokens"]:
        raise BadRequest("'max_completion_tokens' and 'max_tokens' differ; send one of them", "max_tokens")
    key = given[0] if given else "max_tokens"  # a null one is absent, never a mask for the other
    max_tokens = body.get(key)
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > cap:
        raise BadRequest(f"{key} {max_tokens} is above this server's cap ({cap})", key)
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise BadRequest("'stop' must be a string or a list of up to 4 strings", "stop")
        for s in stop:
            text(s, "stop")
    stream, ignore_eos = body.get("stream", False), body.get("ignore_eos", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    if not isinstance(ignore_eos, bool):
        raise BadRequest("'ignore_eos' must be a boolean", "ignore_eos")
    return {
        "max_new_tokens": _num(body, key, 1, cap, min(DEVICE_MAX_NEW_TOKENS, cap), True),
        "temperature": _num(body, "temperature", 0, 2, 0.0),
        "top_p": _num(body, "top_p", 0, 1, 1.0),
        "seed": _num(body, "seed", 0, SEED_MAX, None, True),
        "stop": stop,
        "stream": stream,
        "ignore_eos": ignore_eos,
    }  # an extension (llama-server, vLLM): fixed-length outputs for benchmarks


def text(value: str, param: str) -> str:
    """A string that can be encoded: JSON's ``"\\ud800"`` escape decodes to a lone surrogate, which UTF-8
    cannot hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{param}' holds a lone surrogate (invalid Unicode)", param) from None
    return value


def messages(body: dict) -> list[dict[str, str]]:
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
        out.append({"role": m["role"], "content": text(c, f"messages[{i}].content")})
    return out


def prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise BadRequest("'prompt' must be a string", "prompt")
    return text(p, "prompt")


def feedback(body: dict) -> tuple[str, bool, str | None]:
    rid, good, note = body.get("request_id"), body.get("good"), body.get("note")
    if not isinstance(rid, str) or not isinstance(good, bool) or (note is not None and not isinstance(note, str)):
        raise BadRequest("expected {'request_id': str, 'good': bool, 'note'?: str}")
    return text(rid, "request_id"), good, None if note is None else text(note, "note")


def host_allowed(value: str | None, allowed: tuple[str, ...]) -> bool:
    """A ``Host`` header a browser could only send for this server: localhost, an IP literal or a listed name."""
    if not value:
        return False
    v = value.strip()
    if v.startswith("["):  # [v6-literal]:port
        end = v.find("]")
        name, rest = (v[1:end], v[end + 1 :]) if end > 0 else ("", "x")
        if rest and not (rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit()):
            return False
    else:
        name, _, port = v.partition(":")
        if port and not (port.isascii() and port.isdigit()):
            return False
    name = name.lower().rstrip(".")
    if "*" in allowed or name == "localhost" or name in {a.lower() for a in allowed}:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False
