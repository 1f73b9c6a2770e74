"""One rule for every resumable job: a rerun continues a job only if it is the *same* job.

A resumed run that silently switched data, learning rate, teacher or sampling would mix two
experiments in one output and report it as one. Each job records its settings plus a digest of
every input file next to its output; a rerun compares and refuses, naming what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from edge_kto_runtime.errors import InvalidInput


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file (streamed), or of a folder's files by relative path; None when absent."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
    else:
        return None
    for f in files:
        if p.is_dir():
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def job_record(settings: dict[str, Any], inputs: dict[str, str | Path | None]) -> dict[str, Any]:
    """Settings and input digests: what a resumed run must match."""
    return {
        "settings": json.loads(json.dumps(settings, default=str)),
        "inputs": {k: file_digest(v) if v else None for k, v in inputs.items()},
    }


def changes(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs between two job records, as readable lines (``lr: 0.0001 -> 0.0002``).

    Only keys both records hold are compared: a setting added in a later version (with its
    default) does not make an older run a different job."""
    out = []
    for section, label in (("settings", ""), ("inputs", "input ")):
        a, b = saved.get(section, {}), current.get(section, {})
        for k in sorted(set(a) & set(b)):
            if k in ignore or a.get(k) == b.get(k):
                continue
            if section == "inputs":
                out.append(f"{label}{k!r} has other contents")
            else:
                out.append(f"{k}: {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}")
    return out


def check_same_job(record_path: Path, current: dict[str, Any], ignore: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming every change when ``record_path`` holds another job's record."""
    if not record_path.is_file():
        return
    try:
        saved = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # an unreadable record is rewritten; the checkpoint itself is checked by its loader
    diff = changes(saved, current, ignore)
    if diff:
        raise InvalidInput(
            f"{record_path.parent}: holds a run of a different job; resuming it would mix two experiments. "
            f"Changed: {'; '.join(diff)}. Use another output, or start over (--force / delete it)."
        )
