"""Human labels joined to candidates by id, from JSONL (``{"id", "label": bool}``) or CSV.

JSONL labels must be JSON booleans, as everywhere else. CSV has no types, so its ``label``
column accepts the spellings annotation tools export: true/false, 1/0, yes/no, up/down.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..jsonl import DataError, DataIssue, iter_jsonl

_CSV_TRUE = {"true", "1", "yes", "y", "up", "good", "+"}
_CSV_FALSE = {"false", "0", "no", "n", "down", "bad", "-"}


def read_human_labels(path: str | Path) -> dict[str, bool]:
    path = Path(path)
    issues: list[DataIssue] = []
    labels: dict[str, bool] = {}
    first_line: dict[str, int] = {}

    def add(line: int, rid, value) -> None:
        if rid in (None, ""):
            issues.append(DataIssue(str(path), line, "id", "missing"))
            return
        rid = str(rid)
        if rid in labels:
            issues.append(DataIssue(str(path), line, "id", f"duplicate id {rid!r} (first seen on line {first_line[rid]})"))
            return
        labels[rid], first_line[rid] = value, line

    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"id", "label"} <= set(reader.fieldnames):
                raise DataError([DataIssue(str(path), 1, None, "CSV needs a header with columns 'id' and 'label'")])
            for line, rec in enumerate(reader, start=2):
                raw = (rec.get("label") or "").strip().lower()
                if raw in _CSV_TRUE:
                    add(line, rec.get("id"), True)
                elif raw in _CSV_FALSE:
                    add(line, rec.get("id"), False)
                else:
                    issues.append(DataIssue(str(path), line, "label", f"cannot read {rec.get('label')!r} as a label (true/false, 1/0, yes/no, up/down)"))
    else:
        for line, obj in iter_jsonl(path):
            lab = obj.get("label")
            if not isinstance(lab, bool):
                issues.append(DataIssue(str(path), line, "label", f"must be a JSON boolean (true/false), got {type(lab).__name__} {lab!r}"))
                continue
            add(line, obj.get("id"), lab)
    if issues:
        raise DataError(issues)
    return labels
