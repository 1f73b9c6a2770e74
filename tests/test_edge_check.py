"""edge_check (the device re-check in C++, what phones and boards without Python run) built for this
machine measures exactly what the Python runtime's device check measures, and refuses what the
runtime refuses. The aarch64 build of the same source runs under qemu in CI (scripts/aarch64/)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_kto_runtime.check import run_device_check

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("aarch64_check", ROOT / "scripts" / "aarch64" / "check.py")
aarch64_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aarch64_check)


@pytest.fixture(scope="module")
def edge_check(tmp_path_factory) -> Path:
    return aarch64_check.native_edge_check(aarch64_check.llama_src(), tmp_path_factory.mktemp("ec") / "edge_check")


@pytest.mark.integration
@pytest.mark.parametrize(
    "bundle,art",
    [
        ("tiny_bundle", "model-q8_0.gguf"),
        ("tiny_bundle", "model-q4_k_m.gguf"),
        ("finished_bundle", "model-q4_0.gguf"),  # KL against the finished weights (exported_top_logprobs)
    ],
)
def test_the_cpp_check_gives_the_python_checks_numbers(edge_check, request, tmp_path, bundle, art):
    bundle = request.getfixturevalue(bundle)
    out = tmp_path / "r.json"
    p = subprocess.run(
        [str(edge_check), str(bundle), "--artifact", art, "--out", str(out)], capture_output=True, text=True
    )
    py = run_device_check(bundle, [art], n_threads=2)[0]
    cpp = json.loads(out.read_text())
    assert p.returncode == (0 if cpp["passed"] else 3), p.stderr
    assert cpp["positions"] == py["positions"] and cpp["pairs"] == py["pairs"]
    assert cpp["kld_mean"] == pytest.approx(py["kld_mean"], abs=1e-9)
    assert cpp["kld_p99"] == pytest.approx(py["kld_p99"], abs=1e-9)
    assert cpp["top1_agree"] == py["top1_agree"] and cpp["pref_agree"] == py["pref_agree"]
    assert cpp["greedy_match"] == py["greedy_match"]


@pytest.mark.integration
def test_a_flipped_byte_or_a_missing_file_is_refused_before_loading(edge_check, tiny_bundle, tmp_path):
    bad = tmp_path / "b"
    shutil.copytree(tiny_bundle, bad)
    raw = bytearray((bad / "model-q8_0.gguf").read_bytes())
    raw[len(raw) // 3] ^= 0x10
    (bad / "model-q8_0.gguf").write_bytes(bytes(raw))
    p = subprocess.run([str(edge_check), str(bad), "--artifact", "model-q8_0.gguf"], capture_output=True, text=True)
    assert p.returncode == 2 and "model-q8_0.gguf: sha256 mismatch" in p.stderr
    shutil.copy2(tiny_bundle / "model-q8_0.gguf", bad / "model-q8_0.gguf")
    (bad / "golden.jsonl").unlink()
    p = subprocess.run([str(edge_check), str(bad)], capture_output=True, text=True)
    assert p.returncode == 2 and "golden.jsonl: listed in manifest.json but missing" in p.stderr
    p = subprocess.run([str(edge_check), str(tmp_path / "nope")], capture_output=True, text=True)
    assert p.returncode == 2 and "not a bundle" in p.stderr
