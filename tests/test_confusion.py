"""The confusion metric on hand-made answers: a wrong answer with another intent's facts is a confusion;
a wrong answer with no foreign fact, a right one, and a phrase two intents share are not."""

from __future__ import annotations

import json
from pathlib import Path

from edge_kto.confusion import ConfusionRule, confusion_rule
from edge_kto.data import PromptItem, Task, read_task
from edge_kto.evaluate import score_answers

TASKS = Path(__file__).parent.parent / "edge_kto" / "tasks"

RESET = ["Profile > Security", "15 minutes"]
BATTERY = ["CR2032", "18 months"]
ITEMS = [
    PromptItem("r1", "How do I reset my password?", RESET, "reset_password"),
    PromptItem("b1", "When do I change the sensor battery?", BATTERY, "battery_sensor"),
    PromptItem("c1", "What is the capital of France?", ["Paris"]),  # no intent: grouped by reference
    PromptItem("c2", "Which city is France's capital?", ["Paris"]),
    PromptItem("c3", "What is the capital of Japan?", ["Tokyo"]),
]


def _task(eval_items: list[PromptItem]) -> Task:
    return Task("t", "", None, "contains_all", ITEMS, eval_items)


def test_another_intents_fact_in_a_wrong_answer_is_a_confusion():
    battery_q = ITEMS[1]
    answers = [
        "Go to profile > security > reset password; the code lasts 15 minutes.",  # reset steps: confused
        "The sensor takes one CR2032 cell that lasts about 18 months.",  # right
        "Please contact support.",  # wrong, nothing foreign
        "It uses a CR2032 cell; codes expire after 15  MINUTES.",  # half right + a foreign fact: confused
    ]
    r = score_answers("m", _task([battery_q] * 4), answers, 0.0)
    assert [o["correct"] for o in r.outputs] == [False, True, False, False]
    assert [o["confused_with"] for o in r.outputs] == [["15 minutes", "profile > security"], [], [], ["15 minutes"]]
    assert r.confused == 2 and r.row()["confusion_rate"] == 0.5


def test_items_without_intent_are_grouped_by_reference():
    rule = ConfusionRule(ITEMS)
    assert rule.foreign(ITEMS[2], "It is Paris.") == []  # c1 and c2 share a reference: one intent
    assert rule.confused(ITEMS[2], "Tokyo, of course.", correct=False)
    assert not rule.confused(ITEMS[3], "Tokyo, of course.", correct=True)  # a right answer is never confused


def test_a_phrase_two_intents_share_is_not_foreign():
    shared = [PromptItem("a", "q1", ["Settings", "3 AM"], "x"), PromptItem("b", "q2", ["Settings", "45 days"], "y")]
    rule = ConfusionRule(shared)
    assert rule.foreign(shared[0], "Open Settings.") == []
    assert rule.foreign(shared[0], "Open Settings within 45 days.") == ["45 days"]


def test_only_phrase_verifiers_get_the_metric():
    assert confusion_rule(Task("t", "", None, "numeric", ITEMS, ITEMS)) is None
    r = score_answers("m", Task("t", "", None, "exact", ITEMS, ITEMS[:1]), ["x"], 0.0)
    assert r.confused is None and "confusion_rate" not in r.row()


def test_shipped_support_tasks_declare_intents():
    for name in ("brightnest_support", "voltride_support"):
        task = read_task(TASKS / name)
        assert all(it.intent for it in task.train + task.eval)
        rule = confusion_rule(task)
        assert rule is not None and len(rule.phrases) == len({it.intent for it in task.eval})


def _row(pid, intent, completion, label, ref, source="teacher:t"):
    return {"prompt_id": pid, "prompt": [{"role": "user", "content": pid}], "completion": completion, "label": label,
            "reference": ref, "intent": intent, "verifier": "contains_all", "source": source}  # fmt: skip


def test_confusion_negatives_give_each_prompt_other_intents_right_answers_as_undesirable():
    from edge_kto.label.negatives import confusion_negatives
    from edge_kto_runtime.verifiers import contains_all

    rows = [
        _row("r1", "reset", "Profile > Security; 15 minutes.", True, RESET),
        _row("r2", "reset", "No idea.", False, RESET),
        _row("b1", "battery", "A CR2032 lasts 18 months.", True, BATTERY),
        _row("b2", "battery", "A CR2032 lasts 18 months, Profile > Security, 15 minutes.", True, BATTERY),
        _row("s1", "battery", "A CR2032 lasts 18 months.", True, BATTERY, source="student"),  # never a donor
    ]
    out = confusion_negatives(rows, 2, lambda r: contains_all(r["completion"], r["reference"]))
    by = {}
    for r in out:
        by.setdefault(r["prompt_id"], []).append(r)
    assert all(r["label"] is False and r["source"].startswith("confusion:") for r in out)
    # reset prompts get the battery answers; b2's answer also holds reset's facts, so it passes the reset
    # verifier and is never used as a reset negative
    assert [r["completion"] for r in by["r1"]] == ["A CR2032 lasts 18 months."]
    assert [r["negative_of"] for r in by["r1"]] == ["battery"]
    assert [r["completion"] for r in by["b1"]] == ["Profile > Security; 15 minutes."]
    assert {r["id"] for r in out} == {"r1#x0", "r2#x0", "b1#x0", "b2#x0", "s1#x0"}
    assert confusion_negatives(rows, 2, lambda r: False) == confusion_negatives(rows, 2, lambda r: False)


def test_shared_answers_fill_each_prompt_from_its_intent_only_where_its_own_verifier_accepts():
    from edge_kto.label.shared import phrasing_rows, shared_positives
    from edge_kto_runtime.verifiers import contains_all

    rows = [
        _row("r1", "reset", "Profile > Security; 15 minutes.", True, RESET),
        _row("r2", "reset", "No idea.", False, RESET),
        _row("r3", "reset", "Profile > Security, then wait 15 minutes.", True, RESET),
        _row("b1", "battery", "A CR2032 lasts 18 months.", True, BATTERY),
        _row("b2", "battery", "A CR2032 cell.", True, ["CR2032"]),  # asks less: b1's answer fits it, not back
        _row("s1", "battery", "A CR2032 lasts 18 months, odd.", True, BATTERY, source="student"),  # never a donor
    ]
    extra = phrasing_rows(rows, [{"id": "r2~p0", "prompt": "Lost my password", "reference": RESET, "intent": "reset"}])
    assert extra[0]["prompt"] == [{"role": "user", "content": "Lost my password"}] and extra[0]["prompt_id"] == "r2~p0"
    out = shared_positives(rows, 2, lambda r: contains_all(r["completion"], r["reference"]), extra)
    by: dict[str, list[str]] = {}
    for r in out:
        assert r["label"] is True and r["source"].startswith("shared:") and r["labeler"] == "shared"
        by.setdefault(r["prompt_id"], []).append(r["completion"])
    # r1 and r3 each had one accepted answer and get the other; r2 (none) and the new phrasing get both
    assert by["r1"] == ["Profile > Security, then wait 15 minutes."]
    assert by["r3"] == ["Profile > Security; 15 minutes."]
    assert sorted(by["r2"]) == sorted(by["r2~p0"]) == sorted([rows[0]["completion"], rows[2]["completion"]])
    # b2 gets b1's answer (it states CR2032); b1 cannot take b2's (no "18 months"); s1 already has its own
    assert by["b2"] == ["A CR2032 lasts 18 months."] and "b1" not in by
    assert by["s1"] == ["A CR2032 lasts 18 months."]
    assert shared_positives(rows, 2, lambda r: True) == shared_positives(rows, 2, lambda r: True)  # seeded
    assert shared_positives(rows, 1, lambda r: True, extra)[-1]["prompt_id"] == "r2~p0"


def test_teacher_best_of_n_counts_the_teachers_own_samples_not_shared_answers(tmp_path):
    from edge_kto.label import teacher_best_of_n
    from edge_kto.label.shared import shared_positives

    rows = [
        _row("r1", "reset", "Profile > Security; 15 minutes.", True, RESET),
        _row("r2", "reset", "No idea.", False, RESET),
    ]
    rows += shared_positives(rows, 1, lambda r: True)  # r2 gets r1's answer
    p = tmp_path / "kto.jsonl"
    p.write_text("".join(json.dumps({"id": f"{r['prompt_id']}#{i}", **r}) + "\n" for i, r in enumerate(rows)))
    assert any(r["prompt_id"] == "r2" and r["label"] for r in rows)
    assert teacher_best_of_n(p) == (1, 2)
