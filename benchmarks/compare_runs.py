"""Two pipeline runs of the same task, question by question: each model's accuracy and confusion rate
in both, and the paired difference (run B - run A) with a 95% bootstrap interval over questions.

    python benchmarks/compare_runs.py runs/demo/stages/evaluate-KEY_A runs/demo/stages/evaluate-KEY_B \\
        --task edge_kto/tasks/brightnest_support --out benchmarks/results/compare.json

Run A is the anchor (today's recipe); models are matched by kind (teacher, student_before, student_fp,
student_finished, each artifact's quant). One seed per side: the interval is over questions only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_kto.data import read_task  # noqa: E402
from edge_kto.intervals import accuracy_interval, paired_difference  # noqa: E402
from edge_kto.jsonl import iter_jsonl, write_json_atomic  # noqa: E402


def _models(evaluate_dir: Path) -> dict[str, dict]:
    """kind (or artifact quant) -> {name, verdicts, confused} in eval order."""
    done = json.loads((evaluate_dir / "done.json").read_text())["result"]["results"]
    by_name: dict[str, list[dict]] = {}
    for _, o in iter_jsonl(evaluate_dir / "outputs.jsonl"):
        by_name.setdefault(o["model"], []).append(o)
    out = {}
    for r in done:
        key = r["quant"] if r.get("kind") == "artifact" else r["kind"] + (f"-{r['round']}" if "round" in r else "")
        outs = by_name.get(r["name"], [])
        out[key] = {
            "name": r["name"],
            "verdicts": [bool(o["correct"]) for o in outs],
            "confused": [bool(o.get("confused_with")) for o in outs] if outs and "confused_with" in outs[0] else None,
        }
    return out


def _rescore_confusions(models: dict[str, dict], task_dir: str, evaluate_dir: Path) -> None:
    """Runs evaluated before the confusion metric existed: mark their saved answers now, with the same rule."""
    from edge_kto.confusion import confusion_rule

    task = read_task(task_dir)
    rule = confusion_rule(task)
    if rule is None:
        return
    answers: dict[str, list[str]] = {}
    for _, o in iter_jsonl(evaluate_dir / "outputs.jsonl"):
        answers.setdefault(o["model"], []).append(o["answer"])
    for m in models.values():
        if m["confused"] is None and m["name"] in answers:
            m["confused"] = [rule.confused(it, a, c) for it, a, c in zip(task.eval, answers[m["name"]], m["verdicts"])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="run A's evaluate stage folder (the anchor)")
    ap.add_argument("b", help="run B's evaluate stage folder")
    ap.add_argument("--task", required=True, help="the task folder both runs evaluated")
    ap.add_argument("--label-a", default="A")
    ap.add_argument("--label-b", default="B")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    runs = {}
    for side, d in (("a", Path(a.a)), ("b", Path(a.b))):
        runs[side] = _models(d)
        _rescore_confusions(runs[side], a.task, d)
    rows = []
    print(f"| model | {a.label_a} acc | {a.label_b} acc | {a.label_b} - {a.label_a} (points, 95% CI) "
          f"| {a.label_a} confused | {a.label_b} confused |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for key in [k for k in runs["a"] if k in runs["b"]]:
        ma, mb = runs["a"][key], runs["b"][key]
        if len(ma["verdicts"]) != len(mb["verdicts"]) or not ma["verdicts"]:
            continue
        diff = paired_difference([mb["verdicts"]], [ma["verdicts"]])
        acc = {s: accuracy_interval(m["verdicts"]) for s, m in (("a", ma), ("b", mb))}
        conf = {
            s: (sum(m["confused"]) / len(m["confused"]) if m["confused"] else None) for s, m in (("a", ma), ("b", mb))
        }
        rows.append({"model": key, "accuracy": {s: acc[s][0] for s in acc}, "ci95": {s: acc[s][1:] for s in acc},
                     "difference_points": diff, "confusion_rate": conf, "questions": len(ma["verdicts"])})  # fmt: skip
        c = {s: "-" if conf[s] is None else f"{conf[s]:.1%}" for s in conf}
        print(f"| {key} | {acc['a'][0]:.1%} | {acc['b'][0]:.1%} | {diff[0]:+.1f} [{diff[1]:+.1f}, {diff[2]:+.1f}] "
              f"| {c['a']} | {c['b']} |")  # fmt: skip
    write_json_atomic(a.out, {"a": a.a, "b": a.b, "labels": [a.label_a, a.label_b], "task": a.task, "rows": rows,
                              "command": " ".join(sys.argv)})  # fmt: skip
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
