"""The bundle: the hand-off between the server (``edge-kto export``) and the device.

One module owns the format on both sides, so the writer and the reader cannot drift: the
manifest's required fields, streamed sha256 and verification; safe zip extraction is
:mod:`.bundle_zip`. Its own imports are the standard library and this package (whose backend
registry needs numpy).

A bundle is a folder (optionally zipped) with ``manifest.json``::

    {"format": "edge-kto-bundle", "schema_version": 1, "name", "created", "base_model", "training",
     "artifacts": [{"path": "model-q4_k_m.gguf", "backend": "llama.cpp", "quant": "Q4_K_M", "bytes", "sha256"},
                   {"path": "onnx-int4/", "backend": "onnxruntime-genai", "quant": "int4-b32",
                    "files": {"model.onnx": {"bytes", "sha256"}, ...}}],
     "tokenizer": {"chat_template", "bos", "eos", "stop"}, "generation": {...},
     "golden": {"path", "bytes", "sha256"}, "tools": {...}, "alignment": {...}}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from .backends import BACKENDS
from .errors import InvalidInput

FORMAT = "edge-kto-bundle"
SCHEMA_VERSION = 1
_CHUNK = 1 << 20


class BundleError(InvalidInput):
    """The bundle cannot be trusted or used; the message names the file and what is wrong."""


def sha256_file(path: str | Path) -> str:
    """Streamed: a multi-GB artifact never sits in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _safe_rel(rel: str, where: str) -> PurePosixPath:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BundleError(f"{where}: path {rel!r} escapes the bundle folder")
    return p


@dataclass
class Artifact:
    path: str
    backend: str
    quant: str
    entry: dict[str, Any]

    @property
    def is_dir(self) -> bool:
        return "files" in self.entry


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact(a["path"], a["backend"], a.get("quant", ""), a) for a in self.manifest["artifacts"]]

    def artifact(self, path: str) -> Artifact:
        for a in self.artifacts:
            if a.path.rstrip("/") == path.rstrip("/"):
                return a
        raise BundleError(f"{self.root}: no artifact {path!r}; have {[a.path for a in self.artifacts]}")

    def file(self, rel: str) -> Path:
        return self.root / _safe_rel(rel, str(self.root / "manifest.json"))


def validate_manifest(m: Any, where: str) -> None:
    """Schema checks with the field named; unknown schema versions are refused, never guessed."""
    if not isinstance(m, dict):
        raise BundleError(f"{where}: expected a JSON object")
    if m.get("format") != FORMAT:
        raise BundleError(f"{where}: field 'format': expected {FORMAT!r}, got {m.get('format')!r}")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: field 'schema_version': this runtime reads version {SCHEMA_VERSION}, the bundle has "
            f"{m.get('schema_version')!r}; install the edge-kto-runtime that matches the exporter"
        )
    arts = m.get("artifacts")
    if not isinstance(arts, list) or not arts:
        raise BundleError(f"{where}: field 'artifacts': expected a non-empty list")
    for i, a in enumerate(arts):
        f = f"artifacts[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("path"), str):
            raise BundleError(f"{where}: field '{f}.path': missing")
        _safe_rel(a["path"].rstrip("/"), where)
        if a.get("backend") not in BACKENDS:  # the registry: a plugin's backend is known once registered
            raise BundleError(
                f"{where}: field '{f}.backend': expected one of {tuple(BACKENDS)}, got {a.get('backend')!r}"
            )
        if "files" in a:
            if not isinstance(a["files"], dict) or not a["files"]:
                raise BundleError(f"{where}: field '{f}.files': expected a non-empty mapping")
            for name, e in a["files"].items():
                _safe_rel(name, where)
                _check_entry(e, where, f"{f}.files[{name!r}]")
        else:
            _check_entry(a, where, f)
    tok = m.get("tokenizer")
    if not isinstance(tok, dict) or not isinstance(tok.get("chat_template"), str):
        raise BundleError(f"{where}: field 'tokenizer.chat_template': missing")
    for key, ok, want in (
        ("bos", lambda v: v is None or isinstance(v, str), "a string or null"),
        ("eos", _str_list, "a list of strings"),
        ("stop", _str_list, "a list of strings"),
        (
            "eos_ids",
            lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v),
            "a list of integers",
        ),
        ("eos_id", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "an integer or null"),
    ):
        if key in tok and not ok(tok[key]):
            raise BundleError(f"{where}: field 'tokenizer.{key}': expected {want}, got {json.dumps(tok[key])[:80]}")
    for key in ("generation", "alignment", "training", "tools"):
        if key in m and not isinstance(m[key], dict):
            raise BundleError(f"{where}: field '{key}': expected an object, got {type(m[key]).__name__}")
    gen = m.get("generation") or {}
    for key in ("max_new_tokens", "n_ctx"):
        if key in gen and (not isinstance(gen[key], int) or isinstance(gen[key], bool) or gen[key] < 1):
            raise BundleError(f"{where}: field 'generation.{key}': expected a positive integer, got {gen[key]!r}")
    if "temperature" in gen and (
        isinstance(gen["temperature"], bool) or not isinstance(gen["temperature"], (int, float))
    ):
        raise BundleError(f"{where}: field 'generation.temperature': expected a number, got {gen['temperature']!r}")
    if "golden" in m:
        _check_entry(m["golden"], where, "golden")
        if not isinstance(m["golden"].get("path"), str) or not m["golden"]["path"]:
            raise BundleError(f"{where}: field 'golden.path': expected a file name, got {m['golden'].get('path')!r}")
        _safe_rel(m["golden"]["path"], where)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _check_entry(e: Any, where: str, f: str) -> None:
    ok = isinstance(e, dict) and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64
    if (
        not ok
        or any(c not in "0123456789abcdefABCDEF" for c in e["sha256"])
        or not isinstance(e.get("bytes"), int)
        or isinstance(e.get("bytes"), bool)
        or e["bytes"] < 0
    ):
        raise BundleError(f"{where}: field '{f}': needs 'bytes' (int >= 0) and 'sha256' (64 hex digits)")


def _inside(root: Path, path: Path) -> None:
    """Refuse a symlink anywhere between the bundle root and ``path`` (as zips refuse link entries)."""
    p = path
    while p != root and p != p.parent:
        if p.is_symlink():
            raise BundleError(f"{p}: is a symbolic link; bundles hold plain files only (copy the file in)")
        p = p.parent


def _verify_file(path: Path, e: dict[str, Any], root: Path | None = None) -> None:
    if root is not None:
        _inside(root, path)
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing")
    size = path.stat().st_size
    if size != e["bytes"]:
        raise BundleError(f"{path}: {size} bytes, the manifest says {e['bytes']} (truncated or replaced)")
    got = sha256_file(path)
    if got != e["sha256"].lower():
        raise BundleError(f"{path}: sha256 {got} does not match the manifest ({e['sha256']}); the file was modified")


def verify_artifact(b: Bundle, art: Artifact) -> None:
    if art.is_dir:
        folder = b.file(art.path.rstrip("/"))
        _inside(b.root, folder)
        listed = {str(_safe_rel(n, str(b.root))) for n in art.entry["files"]}
        for p in folder.rglob("*"):
            if p.is_symlink():
                raise BundleError(f"{p}: is a symbolic link; bundles hold plain files only")
            if p.is_file() and p.relative_to(folder).as_posix() not in listed:
                raise BundleError(f"{p}: not listed in the manifest (an artifact folder holds only its listed files)")
        for name, e in art.entry["files"].items():
            _verify_file(folder / name, e, b.root)
    else:
        _verify_file(b.file(art.path), art.entry, b.root)


def verify_bundle(b: Bundle, arts: list[Artifact] | None = None) -> None:
    """Size and sha256 of ``arts`` (default: all) and the golden set, against *this* manifest read."""
    for a in b.artifacts if arts is None else arts:
        verify_artifact(b, a)
    if "golden" in b.manifest:
        _verify_file(b.file(b.manifest["golden"]["path"]), b.manifest["golden"], b.root)


def can_pin(art: Artifact) -> bool:
    """Whether :func:`pinned_artifact` verifies ``art`` itself (then a full verify can leave it out)."""
    return not art.is_dir and Path("/proc/self/fd").is_dir()


@contextlib.contextmanager
def pinned_artifact(b: Bundle, art: Artifact, verify: bool) -> Iterator[Path]:
    """The path a backend should open ``art`` by. For a single-file artifact on Linux, with ``verify``,
    the file is opened once, hashed through that descriptor, and handed over as ``/proc/self/fd/N``:
    the backend maps exactly the bytes that were verified, even if the file is replaced in between
    (a verify-then-reopen-by-path gap otherwise). Folder artifacts and other systems get the path."""
    path = b.file(art.path.rstrip("/"))
    if not verify or not can_pin(art):
        yield path
        return
    _inside(b.root, path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BundleError(f"{path}: cannot open the artifact ({e.strerror})") from None
    try:
        h, size = hashlib.sha256(), 0
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            size += len(chunk)
        if size != art.entry["bytes"] or h.hexdigest() != art.entry["sha256"].lower():
            raise BundleError(f"{path}: does not match the manifest ({size} bytes, sha256 {h.hexdigest()}); refused")
        os.lseek(fd, 0, os.SEEK_SET)
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def manifest_digest(root: str | Path) -> str:
    """sha256 of ``manifest.json``: the bundle's integrity root (the manifest holds every other file's hash)."""
    return sha256_file(Path(root) / "manifest.json")


def gate_result(b: Bundle, path: str) -> dict[str, Any] | None:
    """The export's alignment-gate record for one artifact (folder artifacts with or without their slash)."""
    per = (b.manifest.get("alignment") or {}).get("per_artifact") or {}
    r = per.get(path) or per.get(path.rstrip("/")) or per.get(path.rstrip("/") + "/")
    return r if isinstance(r, dict) else None


def failed_artifacts(b: Bundle) -> dict[str, list[str]]:
    """Artifacts the export's alignment gate marked as failed: {path: failures}."""
    out = {}
    for a in b.artifacts:
        r = gate_result(b, a.path)
        if r is not None and r.get("passed") is False:
            out[a.path] = [str(f) for f in r.get("failures") or []] or ["passed: false"]
    return out


def open_bundle(
    path: str | Path, verify: bool | str = True, extract_to: str | Path | None = None, expect_digest: str | None = None
) -> Bundle:
    """Read and check a bundle folder or ``.zip``.

    ``verify``: True checks every file's size and sha256; an artifact path checks that artifact
    (plus the golden set); False checks only the manifest. ``expect_digest``: the sha256 of
    ``manifest.json`` printed at export; any other manifest is refused. A zip is extracted to
    ``extract_to``, by default :func:`extraction_folder`.
    """
    root = Path(path)
    if root.is_file():  # a zip, or a damaged one (a truncated zip has no central directory: not is_zipfile)
        with open(root, "rb") as f:
            magic = f.read(4)
        if not (zipfile.is_zipfile(root) or magic == b"PK\x03\x04" or root.suffix.lower() == ".zip"):
            raise BundleError(f"{root}: not a bundle (a file that is neither a bundle folder nor a zip)")
        from .bundle_zip import extraction_folder, safe_extract

        root = safe_extract(root, Path(extract_to) if extract_to else extraction_folder(root))
    mpath = root / "manifest.json"
    if mpath.is_symlink():
        raise BundleError(f"{mpath}: is a symbolic link; bundles hold plain files only")
    if not mpath.is_file():
        raise BundleError(f"{root}: not a bundle (no manifest.json)")
    raw = mpath.read_bytes()
    if expect_digest is not None:
        got = hashlib.sha256(raw).hexdigest()
        if got != expect_digest.strip().lower():
            raise BundleError(
                f"{mpath}: manifest digest {got} is not the expected {expect_digest.strip().lower()} "
                "(the manifest was edited, or this is another bundle)"
            )
    m = parse_manifest(raw, str(mpath))
    b = Bundle(root, m)
    if verify:
        verify_bundle(b, None if verify is True else [b.artifact(str(verify))])
    return b


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    try:
        m = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{where}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{where}:{e.lineno}: invalid JSON: {e.msg}") from None
    validate_manifest(m, where)
    return m
