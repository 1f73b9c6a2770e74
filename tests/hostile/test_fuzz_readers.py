"""Property-based fuzzing of every reader of user files (issue 37): whatever the bytes, a reader
returns or raises the project's bad-input error naming the file, never anything else. Bounded
(``max_examples``, no deadline) so the suite stays fast; inputs that once found a bug are kept as
``@example`` regression cases.

Readers: JSONL rows (KTO and prompt files), task folders, bundle manifests, zipped bundles, the
feedback database, GGUF importance matrices; the llama.cpp prefix state is fuzzed in
``test_hostile_bundles.py`` (it needs a loaded model)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge_kto.data import read_kto, read_prompts, read_task
from edge_kto.quant.imatrix import Imatrix, read_imatrix, write_imatrix
from edge_kto_runtime.bundle import open_bundle, parse_manifest
from edge_kto_runtime.bundle_zip import zip_bundle
from edge_kto_runtime.errors import UserError
from edge_kto_runtime.feedback import FeedbackStore

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
row_like = st.dictionaries(
    st.sampled_from(["prompt", "completion", "label", "id", "chosen", "rejected", "messages", "reference", "intent"]),
    json_values,
    max_size=5,
)


def _lines(rows: list) -> bytes:
    return b"".join((json.dumps(r) if not isinstance(r, bytes) else r.decode("latin-1")).encode() + b"\n" for r in rows)


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-"))


def _damage(path: Path, flips: list[tuple[int, int]], cut_percent: int = 0) -> None:
    """Set the byte at each (position mod size) to a value, then cut up to a quarter off the end."""
    data = bytearray(path.read_bytes())
    for pos, val in flips:
        data[pos % len(data)] = val
    path.write_bytes(bytes(data[: max(1, len(data) * (100 - cut_percent // 4) // 100)]))


def _only_user_errors(fn, *args) -> None:
    try:
        fn(*args)
    except UserError as e:
        assert str(e), "a refusal says what is wrong"


@FUZZ
@given(st.lists(row_like | st.binary(max_size=30), max_size=6))
@example([{"prompt": [{"role": "user"}], "completion": "a", "label": True}])
@example([{"prompt": "q", "completion": [{"role": "assistant", "content": 5}], "label": False}])
def test_kto_and_prompt_files(rows):
    d = _tmp()
    f = d / "rows.jsonl"
    f.write_bytes(_lines(rows))
    _only_user_errors(read_kto, f)
    _only_user_errors(read_prompts, f)
    shutil.rmtree(d)


@FUZZ
@given(json_values, st.lists(row_like, max_size=3), st.lists(row_like, max_size=3))
@example([], [], [])
@example({"name": "x", "verifier": "exact", "teacher_context": 5}, [{"prompt": "a"}], [{"prompt": "b"}])
@example({"name": "x", "verifier": "exact", "system": ["x"]}, [{"prompt": "a"}], [{"prompt": "b"}])
@example({"name": "x", "verifier": "exact"}, [{"prompt": "a", "intent": 7}], [{"prompt": "b"}])
def test_task_folders(spec, train, evl):
    d = _tmp()
    (d / "task.json").write_text(json.dumps(spec))
    (d / "train.jsonl").write_bytes(_lines(train))
    (d / "eval.jsonl").write_bytes(_lines(evl))
    _only_user_errors(read_task, d)
    shutil.rmtree(d)


manifest_like = json_values | st.fixed_dictionaries(
    {"format": st.just("edge-kto-bundle"), "schema_version": st.just(1)},
    optional={k: json_values for k in ("artifacts", "tokenizer", "golden", "generation", "alignment")},
)
GOLDEN_PATH_5 = {
    "format": "edge-kto-bundle",
    "schema_version": 1,
    "artifacts": [{"path": "a", "backend": "llama.cpp", "bytes": 1, "sha256": "0" * 64}],
    "tokenizer": {"chat_template": ""},
    "golden": {"path": 5, "bytes": 1, "sha256": "0" * 64},
}


@FUZZ
@given(manifest_like)
@example(GOLDEN_PATH_5)
def test_manifests(m):
    _only_user_errors(parse_manifest, json.dumps(m).encode(), "manifest.json")


def _offset_in_fresh_zip(needle: bytes) -> int:
    d = _tmp()
    at = zip_bundle(FIXTURE, d / "b.zip").read_bytes().rfind(needle)
    shutil.rmtree(d)
    return at


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 100))
@example([(_offset_in_fresh_zip(b"PK\x01\x02") + 6, 64)], 0)  # found: "zip file version 6.4" (NotImplementedError)
def test_zipped_bundles(flips, cut_percent):
    d = _tmp()
    z = zip_bundle(FIXTURE, d / "b.zip")
    _damage(z, flips, cut_percent)
    _only_user_errors(open_bundle, z)
    shutil.rmtree(d)


def _feedback_log(path: Path) -> None:
    s = FeedbackStore(path)
    for i in range(6):
        s.log_completion(f"r{i}", [{"role": "user", "content": "q" * 200}], "a" * 200)
        s.add_feedback(f"r{i}", i % 2 == 0, note="n")
    s.close()


def _offset_in_fresh_log(needle: bytes) -> int:
    d = _tmp()
    _feedback_log(d / "f.sqlite")
    at = (d / "f.sqlite").read_bytes().find(needle)
    shutil.rmtree(d)
    return at


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
@example([(_offset_in_fresh_log(b"completions"), 0x80)])  # found: a non-UTF-8 table name in the schema
def test_feedback_databases(flips):
    d = _tmp()
    db = d / "f.sqlite"
    _feedback_log(db)
    _damage(db, flips)

    def export() -> None:
        store = FeedbackStore(db, create=False)
        try:
            store.counts()
            store.export_kto(d / "o.jsonl")
        finally:
            store.close()

    try:
        _only_user_errors(export)
    except sqlite3.DatabaseError as e:  # pragma: no cover - the failure this test exists to catch
        raise AssertionError(f"raw sqlite error escaped: {e}") from None
    shutil.rmtree(d)


def _imatrix_file(d: Path) -> Path:
    im = Imatrix()
    im.sums["blk.0.attn_q.weight"], im.counts["blk.0.attn_q.weight"] = np.arange(8, dtype=np.float64), 3
    return write_imatrix(im, d / "m.gguf")


def _offset_in_fresh_imatrix(needle: bytes) -> int:
    d = _tmp()
    at = _imatrix_file(d).read_bytes().find(needle)
    shutil.rmtree(d)
    return at


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 100))
@example([(_offset_in_fresh_imatrix(b"imatrix"), 0x80)], 0)  # found: general.type not UTF-8
def test_importance_matrices(flips, cut_percent):
    d = _tmp()
    path = _imatrix_file(d)
    _damage(path, flips, cut_percent)
    _only_user_errors(read_imatrix, path)
    shutil.rmtree(d)
