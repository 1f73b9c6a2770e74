"""The device-feedback round's requests (issue 37.3): a refusal names the training prompt and carries
the server's reason; per-request seeds are always ones the server accepts; the server is started with
the round's answer budget as its cap."""

from __future__ import annotations

import zlib

import httpx
import pytest

from edge_kto.pipeline.device_feedback import SEED_MAX_PLUS_ONE, RuntimeServer, _refused
from edge_kto_runtime.errors import ToolError, UserError
from edge_kto_runtime.serve_requests import SEED_MAX


def test_a_refused_request_names_the_prompt_and_the_servers_reason():
    r = httpx.Response(400, json={"error": {"message": "max_tokens 600 is over the cap 512", "param": "max_tokens"}})
    with pytest.raises(UserError, match=r"training prompt 'p7'.*answered 400: max_tokens 600 is over the cap 512"):
        _refused(r, "p7")
    with pytest.raises(ToolError, match="answered 503: busy"):
        _refused(httpx.Response(503, text="busy"), "p7")
    _refused(httpx.Response(200, json={}), "p7")  # fine: nothing raised


def test_per_request_seeds_stay_in_the_servers_range():
    assert SEED_MAX_PLUS_ONE == SEED_MAX + 1 == 2**32 - 1
    assert (2**32 - 1) % SEED_MAX_PLUS_ONE == 0  # crc32's top value would be llama.cpp's "random seed"
    assert all(zlib.crc32(f"0:p{i}:0".encode()) % SEED_MAX_PLUS_ONE <= SEED_MAX for i in range(1000))


def test_the_rounds_server_gets_the_rounds_token_budget_as_its_cap(tmp_path):
    srv = RuntimeServer(tmp_path / "no-bundle", tmp_path / "f.sqlite", tmp_path / "serve.log", max_tokens=600)
    try:
        assert srv.proc.args[srv.proc.args.index("--max-tokens-cap") + 1] == "600"
    finally:
        srv.close()
    srv = RuntimeServer(tmp_path / "no-bundle", tmp_path / "f.sqlite", tmp_path / "serve.log", max_tokens=96)
    try:
        assert srv.proc.args[srv.proc.args.index("--max-tokens-cap") + 1] == "512"  # never below the default
    finally:
        srv.close()
