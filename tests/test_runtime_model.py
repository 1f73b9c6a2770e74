"""The device runtime without torch: loading with verification, refusals, generation on both
backends, UTF-8-safe streaming, stop strings, context overflow, scoring. Runs in the runtime-only
CI venv too (bundles then come from EDGE_KTO_TEST_BUNDLE / EDGE_KTO_TEST_SMOL_BUNDLE)."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from edge_kto_runtime import BundleError, ContextOverflow, load, open_bundle
from edge_kto_runtime.bundle import manifest_digest
from edge_kto_runtime.bundle_zip import safe_extract, zip_bundle

pytest.importorskip("llama_cpp")
pytest.importorskip("onnxruntime_genai")

JAPAN = [{"role": "user", "content": "What is the capital of Japan? Answer in one word."}]


@pytest.mark.real_model
@pytest.mark.parametrize("backend", ["llama.cpp", "onnx"])
def test_both_backends_answer_from_a_real_smollm2_bundle(smol_bundle, backend):
    with load(smol_bundle, backend=backend, n_threads=2) as m:
        c = m.complete(JAPAN, max_new_tokens=12)
        assert "Tokyo" in c.text, c.text
        assert c.prompt_tokens > 10 and 0 < len(c.token_ids) <= 12 and c.ttft_s <= c.total_s
        pieces = list(m.stream(JAPAN, max_new_tokens=12))
        assert "".join(pieces) == c.text and len(pieces) > 1
        assert m.info()["load_s"] > 0 and m.info()["n_threads"] == 2


@pytest.mark.real_model
def test_stream_never_splits_a_character_and_stops_at_stop_strings(smol_bundle):
    prompt = "Emoji list: 😀 😃 😄 😁 😆 😅 😂 🤣 😊 😇 🙂"  # raw text: the model continues with emoji
    for backend in ("llama.cpp", "onnx"):
        with load(smol_bundle, backend=backend, verify=False) as m:
            full = m.generate(prompt, max_new_tokens=16)
            ids = m.complete(prompt, max_new_tokens=16).token_ids
            split = sum(1 for t in ids if "\ufffd" in m.backend.detokenize([t]).decode("utf-8", "replace"))
            assert split > 0, "some emoji span several tokens (what makes naive streaming print garbage)"
            pieces = list(m.stream(prompt, max_new_tokens=16))
            assert "".join(pieces) == full and "\ufffd" not in full
            assert all("\ufffd" not in p for p in pieces)
            emoji = next(ch for ch in full if ord(ch) > 0x2000)
            stopped = m.generate(prompt, max_new_tokens=16, stop=[emoji])
            assert emoji not in stopped and full.startswith(stopped)


@pytest.mark.integration
def test_bundle_loads_each_artifact_and_reports_timings(tiny_bundle):
    b = open_bundle(tiny_bundle)
    for art in b.artifacts:
        with load(tiny_bundle, artifact=art.path, verify=False) as m:
            out = m.complete("hello", max_new_tokens=4)
            assert len(out.token_ids) == 4 and out.finish_reason == "length"
            assert m.info()["backend"] == art.backend


@pytest.mark.integration
def test_score_is_the_summed_log_prob_and_agrees_across_fp_artifacts(tiny_bundle):
    golden = [json.loads(x) for x in (tiny_bundle / "golden.jsonl").read_text().splitlines()]
    row = golden[0]
    comp = row["completions"][0]
    for art in ("model-f32.gguf",):  # fp32: equals the fp log-prob stored at export within fp tolerance
        with load(tiny_bundle, artifact=art, verify=False) as m:
            assert m.score_ids(row["prompt_ids"], comp["ids"]) == pytest.approx(comp["logp"], abs=2e-2)
            assert m.score(row["messages"], comp["text"]) == pytest.approx(comp["logp"], abs=2e-2)
            assert m.encode(row["messages"]) == row["prompt_ids"]


@pytest.mark.integration
def test_prompt_longer_than_the_context_is_a_clear_error_or_truncated(tiny_bundle):
    with load(tiny_bundle, artifact="model-q8_0.gguf", n_ctx=64, verify=False) as m:
        long = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(ContextOverflow, match="context holds 64"):
            m.generate(long, max_new_tokens=4)
        assert len(m.complete(long, max_new_tokens=4, truncate=True).token_ids) == 4


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.integration
def test_refuses_tampered_truncated_missing_and_unknown_schema(tiny_bundle, tmp_path):
    b = _copy(tiny_bundle, tmp_path / "flip")
    data = bytearray((b / "model-q8_0.gguf").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "model-q8_0.gguf").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load(b)

    b = _copy(tiny_bundle, tmp_path / "trunc")
    with open(b / "onnx-int4" / "model.onnx.data", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(BundleError, match="truncated"):
        load(b, artifact="onnx-int4/")

    b = _copy(tiny_bundle, tmp_path / "missing")
    (b / "golden.jsonl").unlink()
    with pytest.raises(BundleError, match="missing"):
        open_bundle(b)

    b = _copy(tiny_bundle, tmp_path / "schema")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="schema_version"):
        load(b)


@pytest.mark.integration
def test_zipped_bundle_loads_and_hostile_archives_are_refused(tiny_bundle, tmp_path):
    z = zip_bundle(tiny_bundle, tmp_path / "ok.zip")
    with load(z, artifact="model-q8_0.gguf") as m:
        assert m.generate("hi", max_new_tokens=2) is not None

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(BundleError, match="escapes"):
        safe_extract(evil, tmp_path / "evil")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "evil").exists()

    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("manifest.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BundleError, match="link"):
        safe_extract(link, tmp_path / "link")
    assert not (tmp_path / "link").exists()


@pytest.mark.integration
def test_missing_backend_names_the_extra_to_install(tiny_bundle, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnxruntime_genai":
            raise ImportError("not installed")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    from edge_kto_runtime.backends import BackendMissing

    with pytest.raises(BackendMissing, match=r"edge-kto-runtime\[onnx\]"):
        load(tiny_bundle, backend="onnx", verify=False)


@pytest.mark.integration
def test_python_api_feedback_logs_completions_and_exports_kto_rows(tiny_bundle, tmp_path):
    from edge_kto_runtime.feedback import FeedbackStore

    db = tmp_path / "fb.sqlite"
    with load(tiny_bundle, artifact="model-q8_0.gguf", verify=False, feedback_db=db) as m:
        good = m.complete([{"role": "user", "content": "hi"}], max_new_tokens=3)
        bad = m.complete("hi", max_new_tokens=3)
        m.feedback(good.request_id, True, note="nice")
        m.feedback(bad.request_id, False)
        with pytest.raises(KeyError):
            m.feedback("no-such-request", True)
    store = FeedbackStore(db)
    rows = {r["id"]: r for r in store.rows()}
    store.close()
    assert rows[good.request_id]["label"] is True and rows[good.request_id]["prompt"] == [
        {"role": "user", "content": "hi"}
    ]
    assert rows[bad.request_id] == {
        "id": bad.request_id,
        "prompt": "hi",
        "completion": bad.text,
        "label": False,
        "source": "device",
        "model": rows[bad.request_id]["model"],
        "bundle": manifest_digest(tiny_bundle),
    }


@pytest.mark.integration
def test_feedback_rows_name_the_bundle_that_served_them_and_export_keeps_one(tiny_bundle, tmp_path):
    """A log from before the ``bundle`` column is migrated in place; ``feedback export --bundle`` keeps
    only that bundle's rows (thumbs on an older model are not on-policy data for this one)."""
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "fb.sqlite"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE completions (request_id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT, "
        "prompt TEXT NOT NULL, completion TEXT NOT NULL);"
        "CREATE TABLE feedback (request_id TEXT PRIMARY KEY, good INTEGER NOT NULL, note TEXT, created REAL NOT NULL);"
        "INSERT INTO completions VALUES ('older', 1.0, 'm', '\"q\"', 'an older answer');"
        "INSERT INTO feedback VALUES ('older', 1, NULL, 1.0);"
    )
    old.commit()
    old.close()
    with load(tiny_bundle, artifact="model-q8_0.gguf", verify=False, feedback_db=db) as m:
        now = m.complete("hi", max_new_tokens=3)
        m.feedback(now.request_id, False)

    def export(*extra: str) -> list[dict]:
        out = tmp_path / "kto.jsonl"
        cmd = [sys.executable, "-m", "edge_kto_runtime.cli", "feedback", "export", "--db", str(db), "--out", str(out)]
        subprocess.run([*cmd, *extra], check=True, capture_output=True)
        return [json.loads(x) for x in out.read_text().splitlines()]

    assert [r["id"] for r in export()] == ["older", now.request_id]
    assert "bundle" not in export()[0]
    for spec in (str(tiny_bundle), manifest_digest(tiny_bundle)):
        (row,) = export("--bundle", spec)
        assert row["id"] == now.request_id and row["bundle"] == manifest_digest(tiny_bundle)


@pytest.mark.integration
def test_a_streamed_answer_is_logged_like_a_completed_one_and_can_be_rated(tiny_bundle, tmp_path):
    from edge_kto_runtime.feedback import FeedbackStore

    db = tmp_path / "fb.sqlite"
    msgs = [{"role": "user", "content": "hi"}]
    with load(tiny_bundle, artifact="model-q8_0.gguf", verify=False, feedback_db=db) as m:
        text = "".join(m.stream(msgs, max_new_tokens=4))
        m.feedback(m.last_request_id, True)
        "".join(m.stream("raw", request_id="mine", max_new_tokens=2))
        m.feedback("mine", False)
    store = FeedbackStore(db)
    rows = {r["id"]: r for r in store.rows()}
    assert store.counts() == {"completions": 2, "rated": 2, "good": 1, "bad": 1}
    store.close()
    assert [r["completion"] for r in rows.values() if r["label"]] == [text] and rows["mine"]["prompt"] == "raw"
