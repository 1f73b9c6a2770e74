"""The Python side of the fixtures the Android core's JVM tests read too (android_demo/core):
the same bundle verifies, and the runtime's feedback export writes the same rows byte for byte."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_kto_runtime import BundleError, open_bundle
from edge_kto_runtime.feedback import FeedbackStore

FIXTURES = Path(__file__).parent / "fixtures"


def test_shared_bundle_fixture_verifies_and_a_flipped_byte_is_refused(tmp_path):
    b = open_bundle(FIXTURES / "bundle", verify=True)
    assert [a.path for a in b.artifacts] == ["model-q4_k_m.gguf", "onnx-int4/"]
    bad = tmp_path / "bundle"
    shutil.copytree(FIXTURES / "bundle", bad)
    data = bytearray((bad / "model-q4_k_m.gguf").read_bytes())
    data[10] ^= 1
    (bad / "model-q4_k_m.gguf").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(bad)


def test_feedback_export_writes_the_shared_rows_byte_for_byte(tmp_path):
    want = (FIXTURES / "feedback_rows.jsonl").read_text(encoding="utf-8").splitlines()
    store = FeedbackStore(tmp_path / "fb.sqlite")
    for line in want:
        row = json.loads(line)
        store.log_completion(row["id"], row["prompt"], row["completion"], row.get("model"))
        store.add_feedback(row["id"], row["label"], row.get("note"))
    out = tmp_path / "kto.jsonl"
    assert store.export_kto(out) == (2, 0)
    store.close()
    assert out.read_text(encoding="utf-8").splitlines() == want
