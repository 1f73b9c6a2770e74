"""One rule at the CLI boundary (issue 37): malformed user input — a task folder, a JSONL file, a
pipeline file, a bundle folder or zip, a feedback database — is exit 2 with the path named, never a
traceback. Every verb that reads a file runs over every hostile file of its kind, in process (a bug
would raise out of ``main``)."""

from __future__ import annotations

import json
import sqlite3
import zipfile
from pathlib import Path

import pytest

from edge_kto.cli import main as kto_main
from edge_kto_runtime.cli import main as rt_main

TASKS = Path(__file__).resolve().parents[2] / "edge_kto" / "tasks"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bundle"
OK_ROW = '{"prompt": "q", "completion": "a", "label": true}\n'


def _task(d: Path, spec: bytes | None, train: bytes | None = b'{"prompt": "a"}\n') -> Path:
    d.mkdir()
    if spec is not None:
        (d / "task.json").write_bytes(spec)
    if train is None:
        (d / "train.jsonl").mkdir()
    else:
        (d / "train.jsonl").write_bytes(train)
    (d / "eval.jsonl").write_bytes(b'{"prompt": "b"}\n')
    return d


TASK_CORPUS = {
    "no task.json": None,
    "list": b"[]",
    "null": b"null",
    "invalid utf-8": b"\xff\xfe{",
    "invalid json": b'{"name": ',
    "teacher_context 5": b'{"name": "x", "verifier": "exact", "teacher_context": 5}',
    "system list": b'{"name": "x", "verifier": "exact", "system": ["x"]}',
    "unknown verifier": b'{"name": "x", "verifier": "nope"}',
    "intent 7": b'{"name": "x", "verifier": "exact"}',  # with an intent of the wrong type below
}

JSONL_CORPUS = {
    "binary": b"\x00\x01\x02\xff\xfe",
    "invalid utf-8": b'{"prompt": "\xff"}\n',
    "not json": b"hello\n",
    "a list row": b"[1, 2]\n",
    "missing fields": b'{"prompt": "q"}\n',
    "label string": b'{"prompt": "q", "completion": "a", "label": "true"}\n',
    "empty": b"",
}


def _bundles(root: Path, tiny_bundle: Path | None = None) -> dict[str, Path]:
    out = {}
    (root / "empty").mkdir()
    out["no manifest"] = root / "empty"
    for name, raw in {"manifest list": b"[]", "manifest bad json": b"{", "manifest not utf-8": b"\xff"}.items():
        (root / name).mkdir()
        (root / name / "manifest.json").write_bytes(raw)
        out[name] = root / name
    (root / "junk.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    out["junk zip"] = root / "junk.zip"
    with zipfile.ZipFile(root / "nomanifest.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    out["zip without manifest"] = root / "nomanifest.zip"
    good = root / "good.zip"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("manifest.json", json.dumps({"schema_version": 1}))
    data = good.read_bytes()
    (root / "truncated.zip").write_bytes(data[: len(data) // 2])
    out["truncated zip"] = root / "truncated.zip"
    return out


def _run(main, argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(TASK_CORPUS))
def test_every_verb_reading_a_task_folder_refuses_a_hostile_one(tmp_path, capsys, kind):
    train = b'{"prompt": "a", "intent": 7}\n' if kind == "intent 7" else b'{"prompt": "a"}\n'
    d = _task(tmp_path / "task", TASK_CORPUS[kind], train)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"task: {TASKS / 'capitals'}\n")
    for main, argv in (
        (kto_main, ["generate", str(d), "--out", str(tmp_path / "o.jsonl"), "--kind", "hf", "--model", "x"]),
        (kto_main, ["run", str(pipeline), "--task", str(d), "--plan"]),
    ):
        code, err = _run(main, argv, capsys)
        assert code == 2 and str(d) in err and "Traceback" not in err, (argv[0], err)
    assert not (tmp_path / "o.jsonl").exists()


def test_a_train_file_that_is_a_folder_is_refused_by_name(tmp_path, capsys):
    d = _task(tmp_path / "task", b'{"name": "x", "verifier": "exact"}', None)
    code, err = _run(kto_main, ["generate", str(d), "--out", str(tmp_path / "o.jsonl")], capsys)
    assert code == 2 and "train.jsonl: is a folder" in err


@pytest.mark.parametrize("kind", sorted(JSONL_CORPUS))
def test_every_verb_reading_rows_refuses_a_hostile_file(tmp_path, capsys, kind):
    f = tmp_path / "rows.jsonl"
    f.write_bytes(JSONL_CORPUS[kind])
    verbs = [["label", str(f), "--out", str(tmp_path / "kto.jsonl"), "--verifier", "exact"]]
    if kind != "empty":  # `data inspect` reports an empty file as 0 rows (a report, not an input to consume)
        verbs.append(["data", "inspect", str(f)])
    for argv in verbs:
        code, err = _run(kto_main, argv, capsys)
        assert code == 2 and str(f) in err and "Traceback" not in err, (argv[0], err)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    code, err = _run(kto_main, ["data", "inspect", str(folder)], capsys)
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize(
    "kind", ["no manifest", "manifest list", "manifest bad json", "manifest not utf-8", "junk zip",
             "zip without manifest", "truncated zip"],
)  # fmt: skip
def test_every_runtime_verb_refuses_a_hostile_bundle(tmp_path, capsys, kind):
    b = _bundles(tmp_path)[kind]
    for argv in (
        ["verify", str(b)],
        ["generate", str(b), "hi", "--max-new-tokens", "2"],
        ["check", str(b)],
        ["bench", str(b), "--runs", "1", "--out", str(tmp_path / "bench")],
        ["serve", str(b), "--port", "0"],
    ):
        code, err = _run(rt_main, argv, capsys)
        assert code == 2 and str(b) in err and "Traceback" not in err, (argv[0], err)


@pytest.mark.parametrize("kind", ["not sqlite", "other app", "corrupt page"])
def test_feedback_verbs_refuse_a_hostile_database(tmp_path, capsys, kind):
    db = tmp_path / "f.sqlite"
    if kind == "not sqlite":
        db.write_bytes(b"plain text, not a database at all " * 10)
    else:
        con = sqlite3.connect(db)
        con.execute("PRAGMA application_id = 99" if kind == "other app" else "PRAGMA page_size = 1024")
        con.execute("CREATE TABLE t (x TEXT)")
        con.execute("INSERT INTO t VALUES (?)", ("x" * 5000,))
        con.commit()
        con.close()
        if kind == "corrupt page":
            raw = bytearray(db.read_bytes())
            raw[1024:2048] = b"\xa5" * 1024  # the table's page
            db.write_bytes(bytes(raw))
    before = db.read_bytes()
    for argv in (["feedback", "stats", "--db", str(db)], ["feedback", "export", "--db", str(db), "--out", "o.jsonl"]):
        code, err = _run(rt_main, argv, capsys)
        assert code == 2 and str(db) in err and "Traceback" not in err, (argv, err)
    assert db.read_bytes() == before


@pytest.mark.parametrize("edit", [{"golden": "path5"}, {"artifacts": "one"}, {"tokenizer": None}])
def test_a_manifest_field_of_the_wrong_type_is_named(tmp_path, capsys, edit):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(FIXTURE, b)
    m = json.loads((b / "manifest.json").read_text())
    if edit.get("golden"):
        m["golden"]["path"] = 5
    else:
        m.update(edit)
    (b / "manifest.json").write_text(json.dumps(m))
    field = next(iter(edit))
    for argv in (["verify", str(b)], ["check", str(b)]):
        code, err = _run(rt_main, argv, capsys)
        assert code == 2 and f"field '{field}" in err and "Traceback" not in err, err


def test_serve_refuses_a_bad_or_taken_port_before_loading_the_model(tmp_path, capsys):
    import socket

    code, err = _run(rt_main, ["serve", str(FIXTURE), "--port", "70000"], capsys)
    assert code == 2 and "port must be 0..65535" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the fixture's GGUF is not a model llama.cpp could load: the port error must come first
        code, err = _run(rt_main, ["serve", str(FIXTURE), "--port", str(port)], capsys)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "section",
    [
        "rounds: {count: 1, temperature: .nan}",
        "rounds: {count: 1, lr: -1}",
        "rounds: {count: 1, source: device, serve_quant: Q9_9}",
        "rounds: {count: 1, epochs: 0}",
        "rounds: {count: 1, max_steps: -5}",
        "train: {lr: -1}",
        "train: {lr: .inf}",
    ],
)
def test_settings_that_fail_after_training_are_refused_by_plan(tmp_path, capsys, section):
    p = tmp_path / "p.yaml"
    p.write_text(f"task: {TASKS / 'capitals'}\n{section}\n")
    code, err = _run(kto_main, ["run", str(p), "--plan"], capsys)
    key = section.split("{")[1].split(":")[0] if "count" not in section else section.split(", ")[-1].split(":")[0]
    assert code == 2 and key.strip() in err and "Traceback" not in err, err


def test_train_refuses_a_negative_learning_rate_before_loading_the_model(tmp_path, capsys):
    data = tmp_path / "kto.jsonl"
    data.write_text(OK_ROW * 4)
    code, err = _run(kto_main, ["train", "--data", str(data), "--model", "no-such-model", "--lr", "-1"], capsys)
    assert code == 2 and "lr: must be a finite number > 0" in err


def test_a_gguf_llama_cpp_cannot_load_is_exit_2_naming_the_file(capsys):
    """The fixture bundle's GGUF has a correct sha256 but is no model (a regression: it was exit 1)."""
    pytest.importorskip("llama_cpp")
    code, err = _run(rt_main, ["generate", str(FIXTURE), "hi", "--max-new-tokens", "2"], capsys)
    assert code == 2 and "llama.cpp cannot load this GGUF" in err and "model-q4_k_m.gguf" in err


def test_every_verb_that_loads_a_bundle_takes_the_manifest_pin(tmp_path, capsys):
    """Issue 37.5: generate, check, bench (and serve, verify) refuse a manifest other than the pinned one."""
    from edge_kto_runtime.bundle import manifest_digest

    wrong = "0" * 64
    for argv in (
        ["generate", str(FIXTURE), "hi", "--expect-digest", wrong],
        ["check", str(FIXTURE), "--expect-digest", wrong],
        ["bench", str(FIXTURE), "--runs", "1", "--out", str(tmp_path / "b"), "--expect-digest", wrong],
        ["serve", str(FIXTURE), "--port", "0", "--expect-digest", wrong],
        ["verify", str(FIXTURE), "--expect", wrong],
    ):
        code, err = _run(rt_main, argv, capsys)
        assert code == 2 and "manifest digest" in err and f"not the expected {wrong}" in err, (argv[0], err)
    assert rt_main(["verify", str(FIXTURE), "--expect", manifest_digest(FIXTURE)]) == 0
