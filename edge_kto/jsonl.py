"""JSONL reading with file:line errors, atomic whole-file writes, and a crash-safe append log.

Every stage reads and writes JSONL. Two promises hold here for all of them:
a bad line is reported as ``file:line: field 'x': what is wrong``, and an output
file is either the old one or the complete new one, never half of each.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from edge_kto_runtime.atomic import write_atomic  # one implementation: server and device
from edge_kto_runtime.errors import InvalidInput, MissingInput


@dataclass(frozen=True)
class DataIssue:
    path: str
    line: int
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}"
        return f"{where}: field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


class DataError(InvalidInput):
    """Bad input data. Holds every issue found (up to a cap) so users fix a file in one pass."""

    MAX_SHOWN = 20

    def __init__(self, issues: list[DataIssue]):
        self.issues = issues
        shown = "\n  ".join(str(i) for i in issues[: self.MAX_SHOWN])
        more = f"\n  ... and {len(issues) - self.MAX_SHOWN} more" if len(issues) > self.MAX_SHOWN else ""
        super().__init__(f"{len(issues)} problem(s) in input data:\n  {shown}{more}")


MAX_LINE_BYTES = 64 << 20  # one JSONL row; a longer line is a broken file, not data


def _lone_surrogate(obj: Any) -> bool:
    """True when a string in ``obj`` holds an unpaired surrogate (JSON's ``"\\ud800"`` escape
    decodes to one): it cannot be encoded as UTF-8, so a tokenizer or a writer would crash later."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(obj, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_lone_surrogate(v) for v in obj)
    return False


def iter_jsonl(path: str | Path, issues: list[DataIssue] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for every valid row; blank lines are skipped.

    Lines end at ``\n`` only: U+2028, U+2029, U+0085 and the other characters ``str.splitlines``
    also breaks at are legal inside JSON strings (we write them unescaped). A UTF-8 BOM at the
    start (Excel, Notepad) is skipped. Invalid UTF-8, invalid JSON, a non-object row, a lone
    surrogate or an over-long line is a :class:`DataIssue` naming file and line: with ``issues``
    given it is appended there and reading goes on (so a reader reports every problem at once);
    without, the first one raises :class:`DataError`.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInput(f"{path}: is a folder, expected a JSONL file")

    def bad(lineno: int, msg: str) -> None:
        issue = DataIssue(str(path), lineno, None, msg)
        if issues is None:
            raise DataError([issue])
        issues.append(issue)

    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):  # binary iteration splits on b"\n" only
            if len(raw) > MAX_LINE_BYTES:
                bad(lineno, f"line is {len(raw)} bytes, over the {MAX_LINE_BYTES}-byte limit for one row")
                continue
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad(lineno, f"invalid UTF-8 at byte {e.start} of the line (save the file as UTF-8)")
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                bad(lineno, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                bad(lineno, f"expected a JSON object, got {type(obj).__name__}")
                continue
            if _lone_surrogate(obj):
                bad(lineno, 'a string holds a lone surrogate escape (e.g. "\\ud800"): not valid Unicode')
                continue
            yield lineno, obj


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    lines = [dumps(r) + "\n" for r in rows]
    write_atomic(path, "".join(lines))
    return len(lines)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _json_or_none(line: bytes) -> Any:
    """One log line's JSON value; None when it is not UTF-8 JSON."""
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


class AppendLog:
    """An append-only JSONL file that survives ``kill -9``.

    Each row goes out in one ``write`` of a complete line followed by ``fsync``, so after a
    crash the file holds whole rows plus at most one torn last line. :meth:`recover` cuts that
    torn tail and returns the rows already done, which is what makes long jobs resumable.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def recover(self, check: Callable[[int, dict], str | None] | None = None) -> list[dict]:
        """The rows already written, after cutting a torn last line (a crash mid-write).

        ``check(line, row)`` returns what is wrong with a row that this job could not have
        written (None if fine). Any such row, or invalid JSON before the last line, raises
        :class:`DataError` *before* anything is cut: a file that is not this job's log (a
        user's file given as ``--out`` by mistake) is never modified.
        """
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        self._refuse_foreign_tail(data[cut:], data[:cut].count(b"\n") + 1, check)
        rows = []
        for lineno, line in enumerate(data[:cut].split(b"\n"), start=1):  # b"\n" only: U+2028 etc. live inside rows
            if not line.strip():
                continue
            row = _json_or_none(line)
            problem = "not a JSON object" if not isinstance(row, dict) else check(lineno, row) if check else None
            if problem:
                self._not_ours(lineno, problem)
            rows.append(row)
        if cut != len(data):
            with self.path.open("r+b") as f:
                f.truncate(cut)
        return rows

    def _refuse_foreign_tail(self, tail: bytes, lineno: int, check: Callable[[int, dict], str | None] | None) -> None:
        """A last line without its newline is cut only when it can be a row of ours torn mid-write: the
        start of a JSON object, or a whole one ``check`` accepts. Anything else (a user's one-line
        settings file given as the output) is refused, and the file left as it was."""
        if not tail.strip():
            return
        row = _json_or_none(tail)
        problem = None
        if isinstance(row, dict):
            problem = check(lineno, row) if check else None
        elif row is not None or not tail.lstrip().startswith(b"{"):
            problem = "not the start of a JSON object"
        if problem:
            self._not_ours(lineno, problem)

    def _not_ours(self, lineno: int, problem: str) -> None:
        msg = f"{problem}: this file is not this job's output; it was left unchanged (choose another output path)"
        raise DataError([DataIssue(str(self.path), lineno, None, msg)])

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
