"""``select: smallest-passing``: of the candidates built for one format, ship the first that passes
the alignment gate, in order of size and, among candidates of the same size (within 1%), of the
decode speed the gate measured on this machine. Every candidate's numbers stay in the manifest
(``selection``) and in alignment.md, so a user sees what was tried and why the shipped one was
chosen. When no candidate of a format passes, the best of the rest stays, marked ``passed: false``:
an inconclusive task verdict before a failed one, then the most task accuracy kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edge_kto_runtime.check import markdown_table

from ..jsonl import write_atomic, write_json_atomic

SUMMARY_KEYS = (
    "kld_mean",
    "kl_reference",
    "kld_student_mean",
    "top1_agree",
    "pref_agree",
    "hard_pref_agree",
    "hard_pairs",
    "greedy_match",
    "task_acc",
    "task_acc_fp",
    "task_retention",
    "task_verdict",
    "paired_exported",
    "paired_student",
    "decode_tokens_per_s",
    "passed",
    "failures",
)


SAME_SIZE = 0.01  # candidates within 1% of each other's bytes are the same size: the faster ships


def shipping_order(group: list[dict[str, Any]], per: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidates of one format in the order they are tried: smallest first; same size, faster first."""
    by_size = sorted(group, key=lambda a: a["bytes"])
    out: list[dict[str, Any]] = []
    while by_size:
        tier = [a for a in by_size if a["bytes"] <= by_size[0]["bytes"] * (1 + SAME_SIZE)]
        out += sorted(tier, key=lambda a: -(per[a["path"]].get("decode_tokens_per_s") or 0.0))
        by_size = by_size[len(tier) :]
    return out


def _rank_failing(a: dict[str, Any], per: dict[str, Any]) -> tuple:
    r = per[a["path"]]
    verdict = {"inconclusive": 1, "fail": 0}.get(r.get("task_verdict") or "", 1)
    return (verdict, r.get("task_retention") or 0.0, -(r.get("kld_mean") or 0.0), -a["bytes"])


def choose(artifacts: list[dict[str, Any]], per: dict[str, Any]) -> list[dict[str, Any]]:
    """Per backend, in the order backends first appear: the first passing artifact in
    :func:`shipping_order`, else the best failing one."""
    chosen = []
    for backend in dict.fromkeys(a["backend"] for a in artifacts):
        group = shipping_order([a for a in artifacts if a["backend"] == backend], per)
        passing = [a for a in group if per[a["path"]]["passed"]]
        chosen.append(passing[0] if passing else max(group, key=lambda a: _rank_failing(a, per)))
    return chosen


def select_artifacts(bundle: Path, mode: str, alignment: Any) -> dict[str, Any]:
    """Apply ``mode`` to the checked bundle in ``bundle`` (a folder being built); returns the new manifest."""
    mpath = bundle / "manifest.json"
    m = json.loads(mpath.read_text())
    per = m["alignment"]["per_artifact"]
    arts = m["artifacts"]
    kept = choose(arts, per) if mode == "smallest-passing" else arts
    kept_paths = {a["path"] for a in kept}
    order = {
        a["path"]: i
        for backend in dict.fromkeys(x["backend"] for x in arts)
        for i, a in enumerate(shipping_order([x for x in arts if x["backend"] == backend], per))
    }
    m["selection"] = {
        "mode": mode,
        "chosen": [a["path"] for a in kept],
        "candidates": [
            {
                "path": a["path"],
                "backend": a["backend"],
                "quant": a["quant"],
                "bytes": a["bytes"],
                "bits_per_weight": a.get("bits_per_weight"),
                "recipe": a.get("recipe"),
                "selected": a["path"] in kept_paths,
                "order": order[a["path"]],  # the position it was tried at within its format
                **{k: per[a["path"]].get(k) for k in SUMMARY_KEYS},
            }
            for a in arts
        ],
    }
    if mode == "smallest-passing":
        for a in arts:
            if a["path"] not in kept_paths:
                target = bundle / a["path"].rstrip("/")
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        m["artifacts"] = kept
        m["alignment"]["per_artifact"] = {k: v for k, v in per.items() if k in kept_paths}
        m["alignment"]["passed"] = all(per[p]["passed"] for p in kept_paths)
        alignment.passed = m["alignment"]["passed"]
        _append_selection(bundle / "alignment.md", alignment.results, kept_paths)
    write_json_atomic(mpath, m)
    return m


def _append_selection(report: Path, results: list[dict[str, Any]], kept: set[str]) -> None:
    lines = [
        "",
        "## Selection: per format, the first passing artifact by size (same size: faster first)",
        "",
        "Every candidate above was built and checked; kept: " + ", ".join(f"`{p}`" for p in sorted(kept)) + ".",
        "Candidates not kept were removed from the bundle; their numbers stay in manifest.json (`selection`).",
        "",
    ]
    passed = [r for r in results if r["passed"]]
    if not passed:
        lines.append(
            "**No candidate passed the gate**: the kept artifacts are the ones that kept the most task accuracy."
        )
    text = report.read_text(encoding="utf-8") if report.is_file() else markdown_table(results)
    write_atomic(report, text + "\n".join(lines) + "\n")
