"""Whole-file writes that a crash can never leave half done, and the leftovers of writers that were killed.

A write goes to a temporary file in the same folder, is fsynced, renamed over the target, and the
folder is fsynced so the rename itself survives a power cut. Temporary names carry the writer's
pid and, where the OS tells it, the process's start time (``.NAME.TAG-PID@START-RANDOM``): a later
writer of the same NAME removes those whose process is gone, or whose pid now belongs to a process
started at another time (pid reuse; in a container every run may be pid 1), so ``kill -9`` never
leaves debris that grows run after run. ``edge_kto`` uses this module
too (one implementation for the server and the device).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[a-z]+)-(?P<pid>\d+)(?:@(?P<start>\d+))?-")


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def temp_prefix(name: str, tag: str) -> str:
    """Prefix for a temporary sibling of ``name`` owned by this process (see :func:`sweep_stale`)."""
    start = _start_ticks(os.getpid())
    return f".{name}.{tag}-{os.getpid()}{'' if start is None else f'@{start}'}-"


def _alive(pid: int, start: int | None = None) -> bool:
    """The writer still runs: its pid exists and, when its start time was recorded, started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    if start is not None:
        now = _start_ticks(pid)
        return now is None or now == start
    return True


def sweep_stale(folder: str | Path, name: str) -> list[Path]:
    """Remove temporary siblings of ``name`` left by writers that no longer run; returns what went."""
    gone = []
    for p in Path(folder).glob(f".{glob.escape(name)}.*"):
        m = _TEMP.match(p.name)
        if m is None or m["name"] != name or _alive(int(m["pid"]), int(m["start"]) if m["start"] else None):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name, "tmp"), suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make outputs unreadable to other users
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
