"""Data formats and bad-input messages (file:line and field)."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from edge_kto.cli import main as cli_main
from edge_kto.data import read_kto, read_prompts, read_task
from edge_kto.jsonl import AppendLog, DataError, write_jsonl_atomic
from edge_kto.stats import dataset_stats, kto_weight_range


def test_unpaired_swift_and_conversational_rows(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"id": "a", "prompt": "Hi?", "completion": "Hello.", "label": True},
            {
                "id": "b",
                "prompt": [{"role": "user", "content": "Q"}],
                "completion": [{"role": "assistant", "content": "A"}],
                "label": False,
            },
            {
                "id": "c",
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "U"},
                    {"role": "assistant", "content": "done"},
                ],
                "label": True,
                "source": "device",
            },
        ],
    )
    rows = read_kto(p)
    assert [r.id for r in rows] == ["a", "b", "c"]
    assert rows[0].prompt == [{"role": "user", "content": "Hi?"}] and rows[0].completion == "Hello." and rows[0].label
    assert rows[1].completion == "A" and rows[1].label is False
    assert rows[2].prompt[-1] == {"role": "user", "content": "U"} and rows[2].completion == "done"
    assert rows[2].source == "device"


def test_paired_rows_are_unpaired_and_shuffled(tmp_path):
    pairs = [{"id": f"p{i}", "prompt": f"q{i}", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(40)]
    rows = read_kto(write_jsonl(tmp_path / "pairs.jsonl", pairs), seed=1)
    assert len(rows) == 80 and sum(r.label for r in rows) == 40
    by_id = {r.id: r for r in rows}
    assert by_id["p3#chosen"].completion == "good3" and by_id["p3#rejected"].completion == "bad3"
    labels = [r.label for r in rows]
    # Not blocks of one class: not the input order, and both classes inside the first 10 rows.
    assert labels != [True, False] * 40
    assert len(set(labels[:10])) == 2
    longest_run = max(
        len(run) for run in "".join("D" if x else "U" for x in labels).replace("DU", "D U").replace("UD", "U D").split()
    )
    assert longest_run < 10


@pytest.mark.parametrize(
    "line, needle",
    [
        (
            '{"prompt": "q", "completion": "a", "label": "true"}',
            "field 'label': must be a JSON boolean (true/false), got str \"true\"",
        ),
        (
            '{"prompt": "q", "completion": "a", "label": 1}',
            "field 'label': must be a JSON boolean (true/false), got int 1",
        ),
        ('{"prompt": "q", "completion": "a"}', "field 'label': missing"),
        ('{"completion": "a", "label": true}', "field 'prompt': missing"),
        ('{"prompt": "q", "completion": "   ", "label": true}', "field 'completion': empty completion"),
        ('{"prompt": "q", "completion": "a", "label": true', "invalid JSON"),
        (
            '{"messages": [{"role": "user", "content": "q"}], "label": true}',
            "field 'messages': the last message must be the assistant's",
        ),
        ('{"text": "x"}', "unrecognised row"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, line, needle):
    p = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "ok", "prompt": "q", "completion": "a", "label": true}', line])
    with pytest.raises(DataError) as e:
        read_kto(p)
    assert f"{p}:2: " in str(e.value)
    assert needle in str(e.value)


def test_duplicate_ids_and_all_issues_reported_at_once(tmp_path):
    p = write_jsonl(
        tmp_path / "dup.jsonl",
        [
            {"id": "x", "prompt": "q", "completion": "a", "label": True},
            {"id": "x", "prompt": "q", "completion": "b", "label": False},
            {"id": "y", "prompt": "q", "completion": "", "label": False},
        ],
    )
    with pytest.raises(DataError) as e:
        read_kto(p)
    msg = str(e.value)
    assert "2 problem(s)" in msg
    assert f"{p}:2: field 'id': duplicate id 'x' (first seen on line 1)" in msg
    assert f"{p}:3: field 'completion': empty completion" in msg


def test_prompt_file_and_task_folder(tmp_path):
    p = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "one", "reference": ["x"]}, {"prompt": "two"}])
    items = read_prompts(p)
    assert [i.id for i in items] == ["a", "line2"] and items[0].reference == ["x"]

    task = tmp_path / "task"
    task.mkdir()
    (task / "task.json").write_text(
        json.dumps({"name": "t", "teacher_context": "K", "system": "S", "verifier": "contains_all"})
    )
    write_jsonl(task / "train.jsonl", [{"id": "t1", "prompt": "How?", "reference": ["a"]}])
    write_jsonl(task / "eval.jsonl", [{"id": "e1", "prompt": "Why?", "reference": ["b"]}])
    t = read_task(task)
    assert (t.name, t.teacher_context, t.system, t.verifier) == ("t", "K", "S", "contains_all")
    assert t.train[0].id == "t1" and t.eval[0].id == "e1"

    write_jsonl(task / "eval.jsonl", [{"id": "e1", "prompt": "how?", "reference": ["b"]}])
    with pytest.raises(DataError, match="also appear in train.jsonl"):
        read_task(task)
    (task / "task.json").write_text(json.dumps({"name": "t", "verifier": "fuzzy"}))
    with pytest.raises(DataError, match="field 'verifier': unknown verifier 'fuzzy'"):
        read_task(task)


def test_eq8_weight_range():
    w = kto_weight_range(n_desirable=100, n_undesirable=300)
    lo, hi = w.desirable_weight
    assert lo == pytest.approx(3.0) and hi == pytest.approx(4.0)
    for lam_d in (lo, (lo + hi) / 2, hi):
        assert 1 - 1e-9 <= lam_d * 100 / (1.0 * 300) <= 4 / 3 + 1e-9
    ulo, uhi = w.undesirable_weight
    for lam_u in (ulo, uhi):
        assert 1 - 1e-9 <= 1.0 * 100 / (lam_u * 300) <= 4 / 3 + 1e-9
    assert w.recommended == {"desirable_weight": 3.0, "undesirable_weight": 1.0}
    more_d = kto_weight_range(300, 100).recommended
    assert more_d["desirable_weight"] == 1.0 and 1 <= 300 / (more_d["undesirable_weight"] * 100) <= 4 / 3 + 1e-9
    assert kto_weight_range(10, 0).recommended is None


def test_inspect_stats_and_cli(tmp_path, capsys):
    rows = [
        {
            "id": str(i),
            "prompt": "word " * (i + 1),
            "completion": "x " * (2 * i + 1),
            "label": i % 4 == 0,
            "source": "teacher:t",
        }
        for i in range(20)
    ]
    p = write_jsonl(tmp_path / "kto.jsonl", rows)
    st = dataset_stats(p)
    assert (st.rows, st.desirable, st.undesirable) == (20, 5, 15)
    assert st.prompt_lengths["min"] == 1 and st.prompt_lengths["max"] == 20
    assert st.completion_lengths["p50"] == pytest.approx(20.0)
    assert cli_main(["data", "inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "desirable 5, undesirable 15" in out and "lambda_D in [3.000, 4.000]" in out

    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "q", "completion": "a", "label": "yes"}'])
    assert cli_main(["data", "inspect", str(bad)]) == 2
    assert f"{bad}:1: field 'label'" in capsys.readouterr().err


def test_append_log_recovers_after_torn_write(tmp_path):
    path = tmp_path / "log.jsonl"
    with AppendLog(path) as log:
        log.append({"id": 1})
        log.append({"id": 2})
    with path.open("ab") as f:
        f.write(b'{"id": 3, "compl')  # a kill -9 in the middle of a write
    log = AppendLog(path)
    assert log.recover() == [{"id": 1}, {"id": 2}]
    log.append({"id": 3})
    log.close()
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize(
    "content",
    [b"model: qwen\nthreads: 4", b"temperature = 0.7", b'{"theme": "dark", "font": 12}', b"[1, 2, 3]", b"   \xff\xfe"],
)
def test_a_one_line_file_without_newline_is_refused_never_cut(tmp_path, content):
    """Issue 37.7: a user's settings file given as the output lost its only (unterminated) line."""
    path = tmp_path / "settings"
    path.write_bytes(content)
    check = lambda line, row: None if "id" in row else "no 'id'"  # noqa: E731 - a job's own-row rule
    with pytest.raises(DataError, match="left unchanged"):
        AppendLog(path).recover(check)
    assert path.read_bytes() == content


def test_a_torn_first_row_is_still_cut(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "p0#0", "prompt_i')  # killed while writing the very first row
    assert AppendLog(path).recover(lambda line, row: None) == [] and path.read_bytes() == b""


def test_atomic_write_leaves_no_partial_file(tmp_path):
    out = tmp_path / "o.jsonl"
    write_jsonl_atomic(out, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(out, rows())
    assert out.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["o.jsonl"]
