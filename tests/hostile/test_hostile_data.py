"""Hostile data files and resumes: every Unicode line separator, BOMs, invalid UTF-8, lone
surrogates, huge lines, all issues at once, a user's file given as --out, resumes with changed
inputs, leftovers of killed writers, odd teacher responses. Issue 15 items 1, 13, 15-18 and the
low ones on data."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port, write_jsonl

from edge_kto.data import read_kto, read_prompts
from edge_kto.jsonl import AppendLog, DataError, dumps, iter_jsonl
from edge_kto.label.human import read_human_labels
from edge_kto_runtime.atomic import sweep_stale, write_atomic
from edge_kto_runtime.check import read_golden

SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\r"]


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def _row(i: int, text: str) -> dict:
    return {"id": f"r{i}", "prompt": f"question {i}{text}?", "completion": f"answer{text}{i}", "label": i % 2 == 0}


@pytest.mark.parametrize("sep", SEPARATORS, ids=[f"U+{ord(s):04X}" for s in SEPARATORS])
def test_every_line_separator_inside_a_row_survives_every_reader(tmp_path, sep):
    rows = [_row(i, sep) for i in range(4)]
    kto = tmp_path / "kto.jsonl"
    kto.write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert [e.completion for e in read_kto(kto)] == [r["completion"] for r in rows]
    assert [r["completion"] for r in read_golden(kto)] == [r["completion"] for r in rows]  # runtime's reader
    log = AppendLog(tmp_path / "log.jsonl")
    for r in rows:
        log.append(r)
    log.close()
    assert AppendLog(tmp_path / "log.jsonl").recover() == rows  # a generate resume reads them all back


def test_runtime_bench_prompt_file_splits_on_newline_only(tmp_path):
    from edge_kto_runtime.bench import read_prompt_lines

    p = tmp_path / "prompts.txt"
    p.write_bytes("\ufefffirst\u2028still first\u0085too\r\nsecond\n\n".encode("utf-8"))
    assert read_prompt_lines(p) == ["first\u2028still first\u0085too", "second"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompt_lines(tmp_path / "empty.txt")


def test_a_bom_is_skipped_and_every_issue_is_reported_at_once(tmp_path):
    p = tmp_path / "kto.jsonl"
    good = json.dumps(_row(0, ""))
    p.write_bytes(
        b"\xef\xbb\xbf"
        + good.encode()
        + b"\n"
        + b'{"prompt": "q", "completion": "a"}\n'  # line 2: no label
        + b'{"prompt": "q", "completion": "\xff\xfe", "label": true}\n'  # line 3: invalid UTF-8
        + b'{"prompt": "q", "completion": "\\ud800", "label": true}\n'  # line 4: lone surrogate
        + b"{not json\n"  # line 5
        + b"[1, 2]\n"
    )  # line 6
    with pytest.raises(DataError) as e:
        read_kto(p)
    lines = sorted(i.line for i in e.value.issues)
    assert lines == [2, 3, 4, 5, 6], str(e.value)
    msg = str(e.value)
    assert "kto.jsonl:3: invalid UTF-8" in msg and "kto.jsonl:4: a string holds a lone surrogate" in msg
    assert "kto.jsonl:2: field 'label': missing" in msg


def test_a_huge_line_is_refused_by_line_number(tmp_path, monkeypatch):
    import edge_kto.jsonl as j

    monkeypatch.setattr(j, "MAX_LINE_BYTES", 1000)
    p = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "x" * 5000}])
    issues: list = []
    assert [n for n, _ in iter_jsonl(p, issues)] == [1]
    assert issues[0].line == 2 and "over the 1000-byte limit" in issues[0].message
    with pytest.raises(DataError, match="p.jsonl:2"):
        read_prompts(p)


def test_excel_csv_labels_with_a_bom_and_invalid_utf8_name_the_line(tmp_path):
    ok = tmp_path / "labels.csv"
    ok.write_bytes(b"\xef\xbb\xbfid,label\r\na,yes\r\nb,0\r\n")
    assert read_human_labels(ok) == {"a": True, "b": False}
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"id,label\na,yes\nb,\xff\n")
    with pytest.raises(DataError, match="bad.csv:3: invalid UTF-8"):
        read_human_labels(bad)


# ---- 13. a user's file as --out; 15. resume only the same job


def _prompts(tmp_path: Path, texts: list[str]) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "prompt": t} for i, t in enumerate(texts)])


def test_generate_never_truncates_a_file_it_did_not_write(tmp_path):
    from edge_kto.generate import GenerateConfig, run_generate

    user = tmp_path / "notes.jsonl"
    user.write_bytes(b'{"my": "data"}\n{"more": "data"}')  # no trailing newline: the old resume cut it
    before = user.read_bytes()
    with pytest.raises(DataError, match="not a candidates file.*left unchanged"):
        run_generate(GenerateConfig(prompts=str(_prompts(tmp_path, ["hi"])), out=str(user)))
    assert user.read_bytes() == before


@pytest.mark.integration
def test_generate_resume_refuses_changed_prompts_teacher_or_sampling(tmp_path, tiny_model_dir):
    from edge_kto.generate import GenerateConfig, run_generate
    from edge_kto.teacher.base import SamplingParams, TeacherConfig

    out = tmp_path / "cand.jsonl"
    teacher = TeacherConfig(kind="hf", model=str(tiny_model_dir), batch_size=2)
    sp = SamplingParams(n=1, temperature=0.7, max_new_tokens=3)
    cfg = GenerateConfig(
        prompts=str(_prompts(tmp_path, ["a question", "another"])),
        out=str(out),
        teacher=teacher,
        sampling=sp,
        progress=False,
    )
    assert run_generate(cfg).written == 2
    assert run_generate(cfg).written == 0  # the same job resumes (nothing left)
    with pytest.raises(DataError, match="sampled with"):
        run_generate(
            GenerateConfig(**{**cfg.__dict__, "sampling": SamplingParams(n=1, temperature=1.0, max_new_tokens=3)})
        )
    with pytest.raises(DataError, match="this run's teacher"):
        run_generate(
            GenerateConfig(
                **{**cfg.__dict__, "teacher": TeacherConfig(kind="hf", model=str(tiny_model_dir), name="other")}
            )
        )
    with pytest.raises(DataError, match="teacher context has changed"):
        run_generate(GenerateConfig(**{**cfg.__dict__, "teacher_context": "secret notes"}))
    edited = _prompts(tmp_path, ["an edited question", "another"])
    with pytest.raises(DataError, match="prompt of id 'p0'"):
        run_generate(GenerateConfig(**{**cfg.__dict__, "prompts": str(edited)}))
    assert len(AppendLog(out).recover()) == 2  # nothing was cut or added by the refused runs


@pytest.mark.integration
def test_train_resume_refuses_other_data_or_learning_rate(tmp_path, tiny_model_dir):
    from edge_kto.train import TrainConfig
    from edge_kto.train.recipe import setup_training

    rows = [
        {"prompt": f"{i} + 1 =", "completion": f" {i + 1}" if i % 2 else " 0", "label": bool(i % 2)} for i in range(16)
    ]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    base = dict(
        data=str(data),
        model=str(tiny_model_dir),
        out=str(tmp_path / "run"),
        batch_size=4,
        max_steps=2,
        cache_dir=str(tmp_path / "ref"),
        plot=False,
    )
    setup_training(TrainConfig.from_dict(base), progress=False)  # a run that was killed before its first checkpoint
    setup_training(
        TrainConfig.from_dict({**base, "save_steps": 7}), resume=True, progress=False
    )  # bookkeeping may change
    with pytest.raises(ValueError, match=r"Changed: lr: 0.0001 -> 0.0002"):
        setup_training(TrainConfig.from_dict({**base, "lr": 2e-4}), resume=True, progress=False)
    write_jsonl(data, rows[::-1][:12])
    with pytest.raises(ValueError, match="input 'data' has other contents"):
        setup_training(TrainConfig.from_dict(base), resume=True, progress=False)


# ---- 16. a mistyped feedback DB; 17. leftovers of killed writers; 18. zip names


def test_feedback_stats_on_a_missing_db_is_an_error_and_creates_nothing(tmp_path, capsys):
    from edge_kto_runtime.cli import main

    db = tmp_path / "typo.sqlite"
    assert main(["feedback", "stats", "--db", str(db)]) == 2
    assert "no feedback log here" in capsys.readouterr().err and not db.exists()
    assert main(["feedback", "export", "--db", str(db), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert not db.exists()


def test_write_atomic_removes_temp_files_of_killed_writers_only(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".out.json.tmp-{dead}-abc.tmp"
    live = tmp_path / f".out.json.tmp-{alive}-xyz.tmp"
    other = tmp_path / f".other.json.tmp-{dead}-abc.tmp"
    for p in (stale, live, other):
        p.write_text("partial")
    write_atomic(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and other.exists()
    assert sweep_stale(tmp_path, "other.json") == [other]


def test_a_reused_pid_does_not_keep_a_dead_writers_debris_forever(tmp_path):
    """Issue 37.8: the pid is alive again (pid reuse; pid 1 in every container run) but the process that
    wrote the temp name started at another time: its debris is swept; this process's own is kept."""
    from edge_kto_runtime.atomic import temp_prefix

    mine = temp_prefix("out.json", "tmp")
    assert "@" in mine  # Linux: the start time is recorded
    pid, start = mine.split("-")[1].split("@")
    reused = tmp_path / f".out.json.tmp-{pid}@{int(start) + 1}-old.tmp"
    live = tmp_path / f"{mine}new.tmp"
    for p in (reused, live):
        p.write_text("partial")
    assert sweep_stale(tmp_path, "out.json") == [reused]
    assert live.exists()


@pytest.mark.integration
def test_export_sweeps_killed_builds_and_zips_under_the_full_name(tmp_path, tiny_model_dir):
    from edge_kto.export import ExportConfig, run_export

    dead = _dead_pid()
    debris = tmp_path / f".student-1.5.building-{dead}-q1w2"
    (debris / "sub").mkdir(parents=True)
    res = run_export(
        ExportConfig(
            source=str(tiny_model_dir),
            out=str(tmp_path / "student-1.5"),
            gguf=["Q8_0"],
            onnx=False,
            check=False,
            zip=True,
        ),
        progress=False,
    )
    assert res.zip_path == tmp_path / "student-1.5.zip" and res.zip_path.is_file()
    assert not (tmp_path / "student-1.zip").exists() and not debris.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- a teacher that answers 200 with nothing usable


class _OddTeacher(BaseHTTPRequestHandler):
    replies = {
        "/empty/v1/chat/completions": (b'{"choices": []}', "application/json"),
        "/html/v1/chat/completions": (b"<html>login</html>", "text/html"),
        "/null/v1/chat/completions": (b'{"choices": [{"message": {"content": 5}}]}', "application/json"),
    }

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body, ctype = self.replies[self.path]
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a) -> None:
        pass


@pytest.mark.parametrize(
    "kind,message", [("empty", "without a choice"), ("html", "not JSON"), ("null", "expected text")]
)
def test_a_teacher_200_without_an_answer_is_a_clear_error(kind, message):
    from edge_kto.teacher.base import GenRequest, SamplingParams, TeacherConfig
    from edge_kto.teacher.openai_http import OpenAITeacher, TeacherHTTPError

    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _OddTeacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t = OpenAITeacher(
        TeacherConfig(
            kind="openai", model="m", base_url=f"http://127.0.0.1:{srv.server_address[1]}/{kind}/v1", max_retries=0
        )
    )
    try:
        with pytest.raises(TeacherHTTPError, match=message):
            t.generate([GenRequest("k", [{"role": "user", "content": "hi"}])], SamplingParams(n=1))
    finally:
        t.close()
        srv.shutdown()
        srv.server_close()
