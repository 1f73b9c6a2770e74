"""On-device feedback log: every served completion, and the user's thumbs on it, in SQLite.

WAL journal with ``synchronous=FULL``: each committed row survives a crash or ``kill -9`` of the
server, and a reader never sees half a transaction. ``export_kto`` writes the rated rows as
unpaired KTO rows (``{"prompt": messages, "completion", "label", "id", "source": "device"}``), the
format ``edge-kto train`` reads, so the deployed student's thumbs become the next KTO round.

Each completion records the sha256 of the manifest of the bundle that wrote it (``bundle``), and
the export can keep one bundle's rows only: thumbs on an older model's answers are not on-policy
data for the current one, and a training round must be able to tell them apart.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .atomic import write_atomic
from .errors import InvalidInput, MissingInput, UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    request_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model TEXT,
    prompt TEXT NOT NULL,          -- JSON: chat messages, or a string for raw completions
    completion TEXT NOT NULL,
    bundle TEXT                    -- sha256 of the serving bundle's manifest.json
);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY REFERENCES completions(request_id),
    good INTEGER NOT NULL CHECK (good IN (0, 1)),
    note TEXT,
    created REAL NOT NULL
);
"""


#: ``PRAGMA application_id`` of a feedback log ("EKTO"): how a log is told from another program's SQLite file.
APPLICATION_ID = 0x454B544F
_COLUMNS = {
    "completions": {"request_id", "created", "model", "prompt", "completion", "bundle"},
    "feedback": {"request_id", "good", "note", "created"},
}


class UnknownRequest(UserError, KeyError):
    pass


def _recognise(db: sqlite3.Connection, path: Path) -> None:
    """Refuse, before anything is written, a SQLite file that is not a feedback log: another
    application's id, or tables this schema does not have. A file with no tables becomes a log; one
    with exactly our tables and no id (an older log, or the Android app's) is adopted."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    if app_id == APPLICATION_ID:
        return
    names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    tables = {n: {c[1] for c in db.execute(f'PRAGMA table_info("{n}")')} for n in names if not n.startswith("sqlite_")}
    ours = all(n in _COLUMNS and _COLUMNS[n] - {"bundle"} <= cols <= _COLUMNS[n] for n, cols in tables.items())
    if app_id != 0 or not ours:
        raise InvalidInput(
            f"{path}: not an edge-kto feedback log (application_id {app_id:#x}, tables {sorted(tables) or 'none'}); "
            "refusing to read or write it"
        )


class FeedbackStore:
    def __init__(self, path: str | Path, create: bool = True, bundle: str | None = None):
        """``create=False`` (reading: stats, export): a missing file is an error, never a new empty log.
        ``bundle``: the manifest sha256 of the bundle whose completions this store logs."""
        self.path, self.bundle = Path(path), bundle
        if not create and not self.path.is_file():
            raise MissingInput(
                f"{self.path}: no feedback log here (the server writes BUNDLE-feedback.sqlite "
                "next to the bundle unless started with --feedback-db)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            _recognise(self._db, self.path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            if "bundle" not in {row[1] for row in self._db.execute("PRAGMA table_info(completions)")}:
                self._db.execute("ALTER TABLE completions ADD COLUMN bundle TEXT")  # a log from before the column
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # not SQLite, or a damaged schema page
            self._db.close()
            raise InvalidInput(f"{self.path}: not a feedback log, or a damaged one ({e})") from None
        except InvalidInput:
            self._db.close()
            raise

    def log_completion(self, request_id: str, prompt: Any, completion: str, model: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions (request_id, created, model, prompt, completion, bundle) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, time.time(), model, json.dumps(prompt, ensure_ascii=False), completion, self.bundle),
            )

    def add_feedback(self, request_id: str, good: bool, note: str | None = None) -> None:
        if not isinstance(good, bool):
            raise InvalidInput("'good' must be a JSON boolean")
        with self._lock:
            if self._db.execute("SELECT 1 FROM completions WHERE request_id = ?", (request_id,)).fetchone() is None:
                raise UnknownRequest(request_id)
            self._db.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?)", (request_id, int(good), note, time.time())
            )

    def rows(self, bundle: str | None = None) -> list[dict[str, Any]]:
        """Rated completions, oldest rating first; ``bundle``: only those that bundle served."""
        where, args = ("WHERE c.bundle = ? ", (bundle,)) if bundle else ("", ())
        with self._lock, self._damaged():
            cur = self._db.execute(
                "SELECT c.request_id, c.prompt, c.completion, f.good, f.note, c.model, c.bundle FROM feedback f "
                f"JOIN completions c USING (request_id) {where}ORDER BY f.created",
                args,
            )
            out = []
            for rid, prompt, completion, good, note, model, digest in cur.fetchall():
                try:
                    p = json.loads(prompt)
                except (TypeError, ValueError):
                    raise InvalidInput(f"{self.path}: completion {rid!r}: its prompt is not JSON") from None
                if not isinstance(completion, str):
                    raise InvalidInput(f"{self.path}: completion {rid!r}: its text is not a string")
                row = {
                    "id": rid,
                    "prompt": p if isinstance(p, list) else str(p),
                    "completion": completion,
                    "label": bool(good),
                    "source": "device",
                }
                if note:
                    row["note"] = note
                if model:
                    row["model"] = model
                if digest:
                    row["bundle"] = digest
                out.append(row)
            return out

    @contextlib.contextmanager
    def _damaged(self) -> Iterator[None]:
        """A damaged database (a corrupt page, a truncated file) is bad input naming the file, not a traceback."""
        try:
            yield
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise InvalidInput(f"{self.path}: damaged feedback log ({e})") from None

    def counts(self) -> dict[str, int]:
        with self._lock, self._damaged():
            n = self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
            good = self._db.execute("SELECT COUNT(*), COALESCE(SUM(good), 0) FROM feedback").fetchone()
        return {"completions": n, "rated": good[0], "good": good[1], "bad": good[0] - good[1]}

    def export_kto(self, out: str | Path, bundle: str | None = None) -> tuple[int, int]:
        """Write rated rows as KTO JSONL atomically; returns (rows written, blank completions skipped).

        A blank completion carries nothing to learn from (and the trainer refuses it). ``bundle``:
        only the rows of completions that bundle (manifest sha256) served.
        """
        rated = self.rows(bundle)
        rows = [r for r in rated if r["completion"].strip()]
        write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return len(rows), len(rated) - len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
