"""A feedback log is recognised before anything is written: another program's SQLite file is refused
by name and left byte for byte as it was (issue 37.4); older logs and the Android app's are adopted."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_kto_runtime.cli import main as runtime_main
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.feedback import APPLICATION_ID, SCHEMA, FeedbackStore


def _sqlite(path: Path, script: str) -> bytes:
    con = sqlite3.connect(path)
    con.executescript(script)
    con.commit()
    con.close()
    return path.read_bytes()


FOREIGN = {
    "another app": "PRAGMA application_id = 1234; CREATE TABLE notes (id INTEGER, body TEXT);",
    "no id, other tables": "CREATE TABLE photos (id INTEGER, path TEXT);",
    "our table name, other columns": "CREATE TABLE completions (id INTEGER, text TEXT);",
    "our tables plus one": SCHEMA + "CREATE TABLE extra (x INTEGER);",
}


@pytest.mark.parametrize("kind", sorted(FOREIGN))
def test_another_programs_sqlite_file_is_refused_and_left_unchanged(tmp_path, capsys, kind):
    db = tmp_path / "app.sqlite"
    before = _sqlite(db, FOREIGN[kind])
    with pytest.raises(InvalidInput, match="not an edge-kto feedback log"):
        FeedbackStore(db)
    for argv in (["feedback", "stats", "--db", str(db)], ["feedback", "export", "--db", str(db), "--out", "o.jsonl"]):
        assert runtime_main(argv) == 2
        assert str(db) in capsys.readouterr().err
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]  # no -wal / -shm, no o.jsonl


def test_a_log_without_the_id_is_adopted_and_a_new_log_gets_it(tmp_path):
    old = tmp_path / "old.sqlite"
    before_bundle = SCHEMA.split("    bundle TEXT")[0].rstrip().rstrip(",") + "\n);\n" + SCHEMA.split(");", 1)[1]
    _sqlite(old, before_bundle)  # the schema before the bundle column
    assert "bundle" not in before_bundle and "CREATE TABLE IF NOT EXISTS feedback" in before_bundle
    store = FeedbackStore(old)
    store.log_completion("r1", [{"role": "user", "content": "hi"}], "hello")
    store.add_feedback("r1", True)
    assert store.counts()["good"] == 1
    store.close()
    new = tmp_path / "new.sqlite"
    FeedbackStore(new).close()
    for path in (old, new):
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        con.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    db = tmp_path / "notes.txt"
    db.write_text("just some text, long enough to be read as a header " * 4)
    before = db.read_bytes()
    with pytest.raises(InvalidInput, match="not a feedback log"):
        FeedbackStore(db, create=False)
    assert db.read_bytes() == before


def _log_with_rows(db: Path, n: int = 40) -> None:
    store = FeedbackStore(db)
    for i in range(n):
        store.log_completion(f"r{i}", [{"role": "user", "content": "q" * 300}], "a" * 300)
        store.add_feedback(f"r{i}", i % 2 == 0)
    store.close()


def test_a_non_json_prompt_in_the_log_is_named_not_a_traceback(tmp_path, capsys):
    db = tmp_path / "f.sqlite"
    _log_with_rows(db, 2)
    con = sqlite3.connect(db)
    con.execute("UPDATE completions SET prompt = 'not json' WHERE request_id = 'r1'")
    con.commit()
    con.close()
    code = runtime_main(["feedback", "export", "--db", str(db), "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "completion 'r1': its prompt is not JSON" in capsys.readouterr().err


def test_a_corrupt_page_in_a_log_is_named_not_a_traceback(tmp_path, capsys):
    db = tmp_path / "f.sqlite"
    _log_with_rows(db)
    raw = bytearray(db.read_bytes())
    page = 4096
    raw[2 * page : 3 * page] = b"\xa5" * page  # a table page, past the header and the schema
    db.write_bytes(bytes(raw))
    code = runtime_main(["feedback", "export", "--db", str(db), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and str(db) in err and "Traceback" not in err, err
