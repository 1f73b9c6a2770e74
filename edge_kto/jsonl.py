"""JSONL reading with file:line errors, atomic whole-file writes, and a crash-safe append log.

Every stage reads and writes JSONL. Two promises hold here for all of them:
a bad line is reported as ``file:line: field 'x': what is wrong``, and an output
file is either the old one or the complete new one, never half of each.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator


@dataclass(frozen=True)
class DataIssue:
    path: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


class DataError(ValueError):
    """Bad input data. Holds every issue found (up to a cap) so users fix a file in one pass."""

    MAX_SHOWN = 20

    def __init__(self, issues: list[DataIssue]):
        self.issues = issues
        shown = "\n  ".join(str(i) for i in issues[: self.MAX_SHOWN])
        more = f"\n  ... and {len(issues) - self.MAX_SHOWN} more" if len(issues) > self.MAX_SHOWN else ""
        super().__init__(f"{len(issues)} problem(s) in input data:\n  {shown}{more}")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)``; blank lines are skipped; invalid JSON raises DataError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError([DataIssue(str(path), lineno, None, f"invalid JSON ({e.msg} at column {e.colno})")]) from None
            if not isinstance(obj, dict):
                raise DataError([DataIssue(str(path), lineno, None, f"expected a JSON object, got {type(obj).__name__}")])
            yield lineno, obj


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def write_atomic(path: str | Path, text: str | bytes) -> None:
    """Write a whole file via temp file + fsync + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make outputs unreadable to other users
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8") if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    lines = [dumps(r) + "\n" for r in rows]
    write_atomic(path, "".join(lines))
    return len(lines)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


class AppendLog:
    """An append-only JSONL file that survives ``kill -9``.

    Each row goes out in one ``write`` of a complete line followed by ``fsync``, so after a
    crash the file holds whole rows plus at most one torn last line. :meth:`recover` cuts that
    torn tail and returns the rows already done, which is what makes long jobs resumable.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def recover(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            with self.path.open("r+b") as f:
                f.truncate(cut)
        rows = []
        for line in data[:cut].decode("utf-8").split("\n"):  # never splitlines(): U+2028 etc. live inside rows
            if line.strip():
                rows.append(json.loads(line))
        return rows

    def append(self, row: dict) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(self._fd, (dumps(row) + "\n").encode("utf-8"))
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
