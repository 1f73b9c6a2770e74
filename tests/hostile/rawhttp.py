"""Raw-socket HTTP for the hostile suite: exact bytes out, every byte back, bounded in time."""

from __future__ import annotations

import json
import socket
import time


def exchange(port: int, data: bytes, wait_s: float = 2.0, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` and read until the server closes or ``wait_s`` passes (a kept-alive connection)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(wait_s)
        s.connect((host, port))
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
        return out


def responses(raw: bytes) -> list[int]:
    """Status codes of every response in a byte stream (counts smuggled second answers)."""
    codes = []
    for part in raw.split(b"HTTP/1.")[1:]:
        head = part[2:].split(b"\r\n", 1)[0].split()
        if head and head[0].isdigit():
            codes.append(int(head[0]))
    return codes


def request(
    method: str, path: str, body: bytes | dict | None = None, host: str | None = "127.0.0.1", **headers: str
) -> bytes:
    """One request's bytes; ``host=None`` leaves the Host header out; header names use ``_`` for ``-``."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else [])
    if body is not None:
        headers.setdefault("Content_Type", "application/json")
        headers.setdefault("Content_Length", str(len(body)))
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + (body or b"")


def json_body(raw: bytes) -> dict:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])
