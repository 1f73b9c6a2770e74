"""Extension point: a runtime backend is one file (tests/toy_backend.py) plus one registry line,
and then every door of the runtime (load, ``edge-runtime generate``, --backend choices, the bundle
schema) knows it. Capabilities are declared in the entry, not inferred from the name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from toy_backend import ANSWER

from edge_kto_runtime.backends import BACKENDS, BackendSpec, backend_names, register_backend
from edge_kto_runtime.bundle import BundleError, file_entry, open_bundle
from edge_kto_runtime.cli import main as runtime_main
from edge_kto_runtime.model import load


@pytest.fixture
def toy_registered():
    register_backend(BackendSpec("toy", "toy_backend:ToyBackend", requires="numpy", extra="toy"))  # the one line
    yield
    BACKENDS.pop("toy")


def _toy_bundle(tiny_bundle: Path, dst: Path) -> Path:
    """The tiny bundle's manifest (tokenizer, template, golden set) with one toy artifact."""
    dst.mkdir()
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    (dst / "model.toy").write_bytes(b"TOY weights")
    m["artifacts"] = [{"path": "model.toy", "backend": "toy", "quant": "toy-8", **file_entry(dst / "model.toy")}]
    shutil.copy2(tiny_bundle / m["golden"]["path"], dst / m["golden"]["path"])
    m.pop("alignment", None)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.integration
def test_a_toy_backend_registered_in_one_line_serves_edge_runtime_generate(
    toy_registered, tiny_bundle, tmp_path, capsys
):
    b = _toy_bundle(tiny_bundle, tmp_path / "b")
    assert "toy" in backend_names()
    assert runtime_main(["generate", str(b), "hello", "--backend", "toy", "--max-new-tokens", "64"]) == 0
    assert capsys.readouterr().out.strip() == ANSWER
    with load(b) as m:  # auto picks it too, and the door reports what it is
        assert m.backend_name == "toy" and m.info()["backend"] == "toy" and not m.capabilities.prefix_cache
        assert m.complete([{"role": "user", "content": "x"}], max_new_tokens=3).text == ANSWER[:3]
        with pytest.raises(ValueError, match="toy backend has no prefix cache"):
            m.save_prefix([1, 2], tmp_path / "state.npz", key="k")


@pytest.mark.integration
def test_without_its_registry_line_the_toy_bundle_is_refused_by_name(tiny_bundle, tmp_path):
    b = _toy_bundle(tiny_bundle, tmp_path / "b")
    with pytest.raises(BundleError, match=r"artifacts\[0\]\.backend.*'toy'"):
        open_bundle(b)
    with pytest.raises(SystemExit):  # argparse: not a --backend choice
        runtime_main(["generate", str(b), "hello", "--backend", "toy"])


def test_builtin_backends_declare_their_extra_and_capabilities():
    assert BACKENDS["llama.cpp"].prefix_cache and not BACKENDS["onnxruntime-genai"].prefix_cache
    assert {s.extra for s in BACKENDS.values()} == {"llamacpp", "onnx"}
    assert backend_names()[:1] == ["auto"] and {"gguf", "onnx"} <= set(backend_names())


@pytest.mark.integration
def test_a_registered_backend_that_is_not_installed_names_its_extra(tiny_bundle, tmp_path):
    from edge_kto_runtime.backends import BackendMissing

    b = _toy_bundle(tiny_bundle, tmp_path / "b")
    register_backend(BackendSpec("toy", "toy_backend:ToyBackend", requires="no_such_module_edge_kto", extra="toy"))
    try:
        for kw in ({}, {"artifact": "model.toy"}):  # picked automatically, or named explicitly
            with pytest.raises(BackendMissing, match=r"pip install 'edge-kto-runtime\[toy\]'"):
                load(b, verify=False, **kw)
    finally:
        BACKENDS.pop("toy")
