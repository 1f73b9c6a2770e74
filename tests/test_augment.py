"""Prompt augmentation: new phrasings keep their intent and reference, are never near an eval prompt,
never repeat training, and a killed run resumes without duplicating a row."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import kill_after_lines

from edge_kto.augment import AugmentConfig, near_duplicate, parse_phrasings, select_phrasings
from edge_kto.data import PromptItem, Task

TASKS = Path(__file__).parent.parent / "edge_kto" / "tasks"


def _task() -> Task:
    train = [
        PromptItem("reset-1", "How do I reset my password?", ["Profile > Security"], "reset"),
        PromptItem("plus-1", "How much does Plus cost?", ["$4.99"], "plus"),
    ]
    evl = [PromptItem("reset-9", "I forgot my password, how can I reset it?", ["Profile > Security"], "reset")]
    return Task("t", "", None, "contains_all", train, evl)


def test_near_duplicates_are_caught_through_case_punctuation_and_small_edits():
    assert near_duplicate("I forgot my password, how can I reset it?", "i forgot my password how can i reset it", 0.85)
    assert near_duplicate(
        "I forgot my password; how can I reset it?!", "I forgot my pasword, how can I reset it?", 0.85
    )
    assert near_duplicate("how can I reset it, I forgot my password", "I forgot my password, how can I reset it?", 0.85)
    assert not near_duplicate(
        "What's the way to change my login password?", "I forgot my password, how can I reset it?", 0.85
    )


def test_parse_strips_numbering_and_chatter():
    text = 'Sure! Here are some:\n1. How can I change my password?\n- "Where do I reset my login?"\n\n(3) Pwd?\n'
    assert parse_phrasings(text) == ["How can I change my password?", "Where do I reset my login?"]


def test_select_keeps_new_phrasings_and_refuses_eval_and_training_near_duplicates():
    raw = {
        "reset-1": "\n".join(
            [
                "I forgot my password, how can I reset it?",  # an eval prompt: refused
                "how do i reset my password",  # the source again: refused
                "What are the steps to change my account password?",  # new: kept
                "Where in the app do I set a new password?",  # new: kept
                "Which menu lets me pick a new password?",  # over per_prompt: not asked for
            ]
        ),
        "plus-1": "What is the monthly price of BrightNest Plus?\nWhat are the steps to change my account password?",
    }
    kept, refused_eval, refused_dup = select_phrasings(_task(), raw, AugmentConfig(per_prompt=2))
    assert [(k.id, k.prompt) for k in kept] == [
        ("reset-1~p0", "What are the steps to change my account password?"),
        ("reset-1~p1", "Where in the app do I set a new password?"),
        ("plus-1~p0", "What is the monthly price of BrightNest Plus?"),
    ]
    assert all(k.reference == it.reference and k.intent == it.intent for k, it in zip(kept, [_task().train[0]] * 2))
    assert kept[2].reference == ["$4.99"] and kept[2].intent == "plus"
    assert (refused_eval, refused_dup) == (1, 2)  # plus-1's copy of reset-1's phrasing is a duplicate too


def test_config_refuses_bad_numbers():
    from edge_kto_runtime.errors import InvalidInput

    for bad in ({"per_prompt": -1}, {"similarity": 0}, {"max_new_tokens": 4}):
        with pytest.raises(InvalidInput):
            AugmentConfig(**bad).validate()


_RUN = """
import sys
from pathlib import Path
from edge_kto.augment import AugmentConfig, run_augment
from edge_kto.data import read_task
from edge_kto.teacher.base import TeacherConfig
res = run_augment(read_task(sys.argv[1]), AugmentConfig(per_prompt=2, max_new_tokens=48), Path(sys.argv[2]),
                  TeacherConfig(kind="gguf", model=sys.argv[3], n_threads=2, parallel=1), progress=False)
print(res.kept)
"""


@pytest.mark.real_model
def test_augment_resumes_after_kill9_without_duplicates_and_keeps_eval_out(tmp_path, smol):
    task = TASKS / "capitals"
    cmd = [sys.executable, "-c", _RUN, str(task), str(tmp_path / "a"), str(smol.gguf)]
    raw = tmp_path / "a" / "raw.jsonl"
    kill_after_lines(cmd, raw, 3)
    before = raw.read_bytes().splitlines()
    assert 3 <= len(before) < 10 and not (tmp_path / "a" / "prompts.jsonl").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    rows = [json.loads(x) for x in raw.read_text().splitlines()]
    assert raw.read_bytes().splitlines()[: len(before)] == before
    assert sorted(r["prompt_id"] for r in rows) == sorted({r["prompt_id"] for r in rows}) and len(rows) == 10
    fresh = tmp_path / "b"
    subprocess.run([*cmd[:4], str(fresh), *cmd[5:]], check=True, capture_output=True)
    assert (fresh / "prompts.jsonl").read_bytes() == (tmp_path / "a" / "prompts.jsonl").read_bytes()
    from edge_kto.data import read_prompts, read_task

    t = read_task(task)
    kept = read_prompts(tmp_path / "a" / "prompts.jsonl")
    assert not any(near_duplicate(k.prompt, e.prompt, 0.85) for k in kept for e in t.eval)
