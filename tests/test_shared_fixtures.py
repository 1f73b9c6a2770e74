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


def test_chat_render_fixture_is_what_the_runtime_renders():
    """The Android core's ChatMl is tested against these texts; they must stay the runtime's."""
    from edge_kto_runtime.chat import render_chat

    doc = json.loads((FIXTURES / "chat_render.json").read_text(encoding="utf-8"))
    assert len(doc["cases"]) == 8
    for case in doc["cases"]:
        assert render_chat(doc["templates"][case["template"]], case["messages"], True) == case["text"], case[
            "conversation"
        ]


def test_feedback_schema_fixture_is_the_runtime_schema():
    """The Android app creates its feedback database from the same SQL (android_demo/core FeedbackSchema)."""
    from edge_kto_runtime.feedback import SCHEMA

    assert (FIXTURES / "feedback_schema.sql").read_text(encoding="utf-8") == SCHEMA.strip() + "\n"
