"""Labelers: verifiers, a user callable, human labels, an LLM judge, on-policy student samples."""

from __future__ import annotations

import json

import pytest
from conftest import write_jsonl

from edge_kto.jsonl import DataError
from edge_kto.label import LabelConfig, OnPolicyConfig, run_label
from edge_kto.label.human import read_human_labels
from edge_kto.label.judge import parse_verdict
from edge_kto.label.verifiers import contains_all, exact, get_verifier, normalized_exact, numeric, regex
from edge_kto.teacher import SamplingParams, TeacherConfig, make_teacher


def test_verifiers():
    assert exact(" 42 ", "42") and not exact("42.", "42")
    assert normalized_exact("  The  ANSWER is Paris. ", "the answer is paris")
    assert contains_all("Go to Settings > Privacy and tap  Reset.", ["settings > privacy", "tap reset"])
    assert not contains_all("Go to Settings.", ["settings", "reset"])
    assert regex("Order #A-1234 shipped", r"#A-\d{4}") and not regex("no order", r"#A-\d{4}")
    assert numeric("so the total is 1,234.50 dollars", 1234.5) and numeric("#### -7", -7)
    assert not numeric("about 12", 13) and not numeric("no number", 1)
    assert get_verifier("edge_kto.label.verifiers:exact") is exact
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("fuzzy")
    with pytest.raises(ValueError, match="cannot import verifier"):
        get_verifier("no_such_module:f")


@pytest.mark.parametrize(
    "text, want",
    [
        ("VERDICT: yes", True),
        ("The answer misses the code.\nVERDICT: no", False),
        ("verdict=**Yes**", True),
        ("Yes, it is correct.", True),
        ("no.", False),
        ("I think verdict: no... actually VERDICT: yes", True),
        ("The answer is fine", None),
        ("", None),
        ("yesterday it worked", None),
    ],
)
def test_parse_verdict(text, want):
    assert parse_verdict(text) is want


def _cands(tmp_path):
    rows = []
    for i, (comp, ok) in enumerate(
        [
            ("Reset code 4417, go to Settings", True),
            ("I do not know", False),
            ("The code is 4417 in Settings", True),
            ("I do not know", False),
        ]
    ):
        pid = f"q{i // 2}"
        rows.append(
            {
                "id": f"{pid}#{i % 2}",
                "prompt_id": pid,
                "sample_index": i % 2,
                "prompt": [{"role": "user", "content": f"question {pid}"}],
                "completion": comp,
                "reference": ["4417", "settings"],
                "verifier": "contains_all",
                "source": "teacher:t",
            }
        )
    rows.append(
        {
            "id": "q2#0",
            "prompt_id": "q2",
            "sample_index": 0,
            "prompt": [{"role": "user", "content": "question q2"}],
            "completion": "nope",
            "reference": ["4417"],
            "verifier": "contains_all",
            "source": "teacher:t",
        }
    )
    return write_jsonl(tmp_path / "cands.jsonl", rows)


def test_label_with_task_verifier_writes_rows_and_summary(tmp_path):
    out = tmp_path / "kto.jsonl"
    res = run_label(LabelConfig(candidates=str(_cands(tmp_path)), out=str(out), progress=False))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    s = res.summary
    # "I do not know" appears for q0 and q1 with different prompts: not duplicates.
    assert [r["label"] for r in rows] == [True, False, True, False, False]
    assert rows[0]["labeler"] == "verifier:contains_all" and rows[0]["source"] == "teacher:t"
    assert (s["desirable"], s["undesirable"], s["prompts"]) == (2, 3, 3)
    assert s["prompts_without_desirable"] == ["q2"]
    assert s["recommended_weights"] == {"desirable_weight": 1.5, "undesirable_weight": 1.0}
    assert json.loads(res.summary_path.read_text()) == s


def test_user_callable_verifier(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(
        "def starts_with_reset(completion, reference):\n    return completion.startswith('Reset')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_label(
        LabelConfig(
            candidates=str(_cands(tmp_path)),
            out=str(tmp_path / "k.jsonl"),
            verifier="my_rules:starts_with_reset",
            progress=False,
        )
    )
    rows = [json.loads(x) for x in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == [True, False, False, False, False]
    assert rows[0]["labeler"] == "verifier:my_rules:starts_with_reset"


def test_human_labels_jsonl_and_csv(tmp_path):
    cands = _cands(tmp_path)
    write_jsonl(tmp_path / "h.jsonl", [{"id": "q0#0", "label": False}, {"id": "q1#1", "label": True}])
    res = run_label(
        LabelConfig(
            candidates=str(cands),
            out=str(tmp_path / "a.jsonl"),
            labeler="human",
            human_labels=str(tmp_path / "h.jsonl"),
            progress=False,
        )
    )
    assert (res.summary["rows"], res.summary["desirable"], res.summary["unlabeled_or_unparseable"]) == (2, 1, 3)

    (tmp_path / "h.csv").write_text("id,label\nq0#0,yes\nq0#1,0\nq1#0,thumbs\n")
    with pytest.raises(DataError, match=r"h.csv:4: field 'label': cannot read 'thumbs'"):
        read_human_labels(tmp_path / "h.csv")
    (tmp_path / "h.csv").write_text("id,label\nq0#0,yes\nq0#1,0\n")
    assert read_human_labels(tmp_path / "h.csv") == {"q0#0": True, "q0#1": False}
    write_jsonl(tmp_path / "bad.jsonl", [{"id": "q0#0", "label": "true"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'label': must be a JSON boolean"):
        read_human_labels(tmp_path / "bad.jsonl")


@pytest.mark.real_model
def test_llm_judge_over_llamacpp_backend(tmp_path, smol):
    cands = _cands(tmp_path)
    judge = make_teacher(TeacherConfig(kind="gguf", model=str(smol.gguf), n_ctx=2048, n_threads=2))
    try:
        res = run_label(
            LabelConfig(candidates=str(cands), out=str(tmp_path / "j.jsonl"), labeler="judge", progress=False),
            judge_teacher=judge,
        )
    finally:
        judge.close()
    s = res.summary
    assert s["rows"] + s["unlabeled_or_unparseable"] + s["duplicates_dropped"] == 5
    rows = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert all(isinstance(r["label"], bool) and r["labeler"] == "judge" for r in rows)


@pytest.mark.integration
def test_on_policy_student_samples_are_mixed_in(tmp_path, tiny_model_dir):
    cfg = LabelConfig(
        candidates=str(_cands(tmp_path)),
        out=str(tmp_path / "op.jsonl"),
        progress=False,
        on_policy=OnPolicyConfig(str(tiny_model_dir), SamplingParams(n=2, temperature=1.0, max_new_tokens=6)),
    )
    res = run_label(cfg)
    rows = [json.loads(x) for x in (tmp_path / "op.jsonl").read_text().splitlines()]
    student = [r for r in rows if r["source"] == "student"]
    assert student and all(r["id"].split("#s")[0] in {"q0", "q1", "q2"} for r in student)
    assert all(r["label"] is False for r in student), "a random tiny model never produces the reset code"
    assert res.summary["by_source"]["student"]["undesirable"] == len(student)
