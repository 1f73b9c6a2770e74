"""Human labels joined to candidates by id, from JSONL (``{"id", "label": bool}``) or CSV.

JSONL labels must be JSON booleans, as everywhere else. CSV has no types, so its ``label``
column accepts the spellings annotation tools export: true/false, 1/0, yes/no, up/down.
"""

from __future__ import annotations

import csv
import io
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
            issues.append(
                DataIssue(str(path), line, "id", f"duplicate id {rid!r} (first seen on line {first_line[rid]})")
            )
            return
        labels[rid], first_line[rid] = value, line

    if path.suffix.lower() == ".csv":
        try:
            text = path.read_bytes().decode("utf-8-sig")  # -sig: Excel writes a BOM before the header
        except UnicodeDecodeError as e:
            line = path.read_bytes()[: e.start].count(b"\n") + 1
            raise DataError([DataIssue(str(path), line, None, "invalid UTF-8 (export the CSV as UTF-8)")]) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"id", "label"} <= {h.strip() for h in reader.fieldnames}:
            raise DataError(
                [
                    DataIssue(
                        str(path), 1, None, f"CSV needs a header with columns 'id' and 'label', got {reader.fieldnames}"
                    )
                ]
            )
        reader.fieldnames = [h.strip() for h in reader.fieldnames]
        for rec in reader:
            line = reader.line_num  # the row's last physical line: quoted fields may span lines
            raw = (rec.get("label") or "").strip().lower()
            if raw in _CSV_TRUE:
                add(line, rec.get("id"), True)
            elif raw in _CSV_FALSE:
                add(line, rec.get("id"), False)
            else:
                issues.append(
                    DataIssue(
                        str(path),
                        line,
                        "label",
                        f"cannot read {rec.get('label')!r} as a label (true/false, 1/0, yes/no, up/down)",
                    )
                )
    else:
        for line, obj in iter_jsonl(path, issues):
            lab = obj.get("label")
            if not isinstance(lab, bool):
                issues.append(
                    DataIssue(
                        str(path),
                        line,
                        "label",
                        f"must be a JSON boolean (true/false), got {type(lab).__name__} {lab!r}",
                    )
                )
                continue
            add(line, obj.get("id"), lab)
    if issues:
        raise DataError(issues)
    return labels
