"""The bundle: the hand-off between the server (``edge-kto export``) and the device.

One module owns the format on both sides, so the writer and the reader cannot drift: the
manifest's required fields, streamed sha256, verification, and safe zip extraction. Nothing
here imports more than the standard library.

A bundle is a folder (optionally zipped) with ``manifest.json``::

    {"format": "edge-kto-bundle", "schema_version": 1, "name", "created", "base_model", "training",
     "artifacts": [{"path": "model-q4_k_m.gguf", "backend": "llama.cpp", "quant": "Q4_K_M", "bytes", "sha256"},
                   {"path": "onnx-int4/", "backend": "onnxruntime-genai", "quant": "int4-b32",
                    "files": {"model.onnx": {"bytes", "sha256"}, ...}}],
     "tokenizer": {"chat_template", "bos", "eos", "stop"}, "generation": {...},
     "golden": {"path", "bytes", "sha256"}, "tools": {...}, "alignment": {...}}
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "edge-kto-bundle"
SCHEMA_VERSION = 1
BACKENDS = ("llama.cpp", "onnxruntime-genai")
_CHUNK = 1 << 20


class BundleError(ValueError):
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
        raise BundleError(f"{where}: field 'schema_version': this runtime reads version {SCHEMA_VERSION}, the bundle has "
                          f"{m.get('schema_version')!r}; install the edge-kto-runtime that matches the exporter")
    arts = m.get("artifacts")
    if not isinstance(arts, list) or not arts:
        raise BundleError(f"{where}: field 'artifacts': expected a non-empty list")
    for i, a in enumerate(arts):
        f = f"artifacts[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("path"), str):
            raise BundleError(f"{where}: field '{f}.path': missing")
        _safe_rel(a["path"].rstrip("/"), where)
        if a.get("backend") not in BACKENDS:
            raise BundleError(f"{where}: field '{f}.backend': expected one of {BACKENDS}, got {a.get('backend')!r}")
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
    if "golden" in m:
        _check_entry(m["golden"], where, "golden")
        _safe_rel(m["golden"].get("path", ""), where)


def _check_entry(e: Any, where: str, f: str) -> None:
    if not isinstance(e, dict) or not isinstance(e.get("sha256"), str) or len(e["sha256"]) != 64 or not isinstance(e.get("bytes"), int):
        raise BundleError(f"{where}: field '{f}': needs 'bytes' (int) and 'sha256' (64 hex digits)")


def _verify_file(path: Path, e: dict[str, Any]) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: listed in the manifest but missing")
    size = path.stat().st_size
    if size != e["bytes"]:
        raise BundleError(f"{path}: {size} bytes, the manifest says {e['bytes']} (truncated or replaced)")
    got = sha256_file(path)
    if got != e["sha256"]:
        raise BundleError(f"{path}: sha256 {got} does not match the manifest ({e['sha256']}); the file was modified")


def verify_artifact(b: Bundle, art: Artifact) -> None:
    if art.is_dir:
        for name, e in art.entry["files"].items():
            _verify_file(b.file(art.path.rstrip("/") + "/" + name), e)
    else:
        _verify_file(b.file(art.path), art.entry)


def open_bundle(path: str | Path, verify: bool | str = True, extract_to: str | Path | None = None) -> Bundle:
    """Read and check a bundle folder or ``.zip``.

    ``verify``: True checks every file's size and sha256; an artifact path checks that artifact
    (plus the golden set); False checks only the manifest.
    """
    root = Path(path)
    if root.is_file() and zipfile.is_zipfile(root):
        root = safe_extract(root, Path(extract_to) if extract_to else root.with_suffix(""))
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise BundleError(f"{root}: not a bundle (no manifest.json)")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}:{e.lineno}: invalid JSON: {e.msg}") from None
    validate_manifest(m, str(mpath))
    b = Bundle(root, m)
    if verify:
        arts = b.artifacts if verify is True else [b.artifact(str(verify))]
        for a in arts:
            verify_artifact(b, a)
        if "golden" in m:
            _verify_file(b.file(m["golden"]["path"]), m["golden"])
    return b


def safe_extract(zpath: Path, dest: Path) -> Path:
    """Extract a zipped bundle; refuse absolute paths, ``..``, symlinks and special files.

    Extracts into a temporary sibling folder and renames it, so a refused archive leaves nothing.
    """
    if (dest / "manifest.json").is_file():
        return dest
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                rel = _safe_rel(info.filename.rstrip("/"), str(zpath)) if info.filename.rstrip("/") else None
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0: the archiver recorded no file type
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise BundleError(f"{zpath}: entry {info.filename!r} is a link or special file; refused")
                if rel is None:
                    continue
                target = tmp / rel
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def zip_bundle(folder: Path, out: Path) -> Path:
    """Zip a bundle folder (stored, not deflated: GGUF/ONNX weights do not compress), atomically."""
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    os.replace(tmp, out)
    return out
