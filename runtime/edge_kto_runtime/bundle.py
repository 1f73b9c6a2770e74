"""The bundle: the hand-off between the server (``edge-kto export``) and the device.

One module owns the format on both sides, so the writer and the reader cannot drift: the
manifest's required fields, streamed sha256, verification, and safe zip extraction. Its own
imports are the standard library and this package (whose backend registry needs numpy).

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
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from .atomic import sweep_stale, temp_prefix
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


MAX_MANIFEST_BYTES = 16 << 20
_STAMP = ".edge-kto-extracted.json"  # which zip (size, mtime) a folder was extracted from


def _listed_sizes(m: dict[str, Any]) -> dict[str, int]:
    """Every file a manifest lists, with its size: what an extraction may write, and how much."""
    out = {"manifest.json": -1}
    for a in m["artifacts"]:
        if "files" in a:
            for name, e in a["files"].items():
                out[str(PurePosixPath(a["path"].rstrip("/")) / name)] = e["bytes"]
        else:
            out[a["path"]] = a["bytes"]
    if "golden" in m:
        out[m["golden"]["path"]] = m["golden"]["bytes"]
    return out


def _zip_stamp(zpath: Path, manifest: bytes) -> dict[str, Any]:
    st = zpath.stat()
    return {
        "zip": zpath.name,
        "bytes": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }


def extraction_folder(zpath: Path) -> Path:
    """Where a zip is extracted by default: ``X.zip`` -> ``X.zip.extracted/`` beside it. Not ``X/``:
    that is where ``export --zip`` leaves the bundle folder, or where a user keeps their own files."""
    return zpath.with_name(zpath.name + ".extracted")


def _refuse_foreign(dest: Path, zpath: Path) -> None:
    """Extraction replaces only a folder it made from a zip of this name; anything else is refused."""
    if not (dest.exists() or dest.is_symlink()):
        return
    try:
        ours = not dest.is_symlink() and json.loads((dest / _STAMP).read_text())["zip"] == zpath.name
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise BundleError(
            f"{dest}: exists and was not extracted from {zpath.name}; refusing to replace it "
            "(move it away, or extract elsewhere: open_bundle(..., extract_to=FOLDER))"
        )


def safe_extract(zpath: Path, dest: Path) -> Path:
    """Extract a zipped bundle, refusing anything that could write outside ``dest`` or fill the disk.

    Absolute paths, ``..``, links and special files are refused. Only the files the zip's own
    manifest lists are written, each exactly its listed size (a zip bomb or a smuggled extra file
    never lands). Extraction goes to a unique temporary sibling that is renamed into place, so a
    refused archive leaves nothing and concurrent first loads do not collide. A folder extracted
    from an earlier version of the zip (other size, mtime or manifest) is replaced; any other
    ``dest`` that exists (a user's folder or file) is refused, never removed.
    """
    with _open_zip(zpath) as z:
        infos: dict[str, zipfile.ZipInfo] = {}
        seen: set[str] = set()
        for i in z.infolist():
            if i.filename.rstrip("/") in seen:
                raise BundleError(f"{zpath}: entry {i.filename!r} appears twice; an ambiguous archive is refused")
            seen.add(i.filename.rstrip("/"))
            infos[i.filename] = i
        for info in infos.values():  # every entry's name and type first: nothing hostile is even read
            if info.filename.rstrip("/"):
                _safe_rel(info.filename.rstrip("/"), str(zpath))
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
                raise BundleError(f"{zpath}: entry {info.filename!r} is a link or special file; refused")
        mi = infos.get("manifest.json")
        if mi is None:
            raise BundleError(f"{zpath}: not a bundle (no manifest.json in the zip)")
        if mi.file_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{zpath}: manifest.json is {mi.file_size} bytes, over {MAX_MANIFEST_BYTES}")
        manifest = _read_entry(z, mi, zpath)
        stamp = _zip_stamp(zpath, manifest)
        if (dest / "manifest.json").is_file() and _same_stamp(dest, stamp):
            return dest
        sizes = _listed_sizes(parse_manifest(manifest, f"{zpath}!manifest.json"))
        _refuse_foreign(dest, zpath)
        _refuse_oversized(zpath, dest, sum(max(n, 0) for n in sizes.values()) + len(manifest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(dest.parent, dest.name)  # extractions a killed loader left behind
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name, "extracting"), dir=dest.parent))
        try:
            for info in infos.values():
                name = info.filename.rstrip("/")
                rel = PurePosixPath(name) if name else None
                if rel is None or info.is_dir() or str(rel) not in sizes:
                    continue  # folders are made as needed; unlisted entries are never written
                want = sizes[str(rel)]
                if want >= 0 and info.file_size != want:
                    raise BundleError(
                        f"{zpath}: entry {name!r} unpacks to {info.file_size} bytes, the manifest lists {want}"
                    )
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with z.open(info) as src, open(target, "wb") as out:
                        _copy_capped(src, out, info.file_size, f"{zpath}: entry {name!r}")
                except _DAMAGED as e:
                    raise BundleError(f"{zpath}: damaged zip, entry {name!r} ({e})") from None
            (tmp / _STAMP).write_text(json.dumps(stamp))
            _swap_in(tmp, dest, stamp, zpath)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


#: How many times its own size a zipped bundle may unpack to. Export stores weights uncompressed (GGUF and
#: ONNX weights do not compress), so a real bundle unpacks to about 1x; zeros deflate a thousandfold.
MAX_UNPACK_RATIO = 4


# What a damaged, encrypted or exotic archive raises while an entry is read (bad CRC, a password, an
# unknown compression method, a cut stream): each is "damaged zip", never a traceback.
_DAMAGED = (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, zlib.error, OSError, ValueError)


def _read_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo, zpath: Path) -> bytes:
    try:
        return z.read(info)
    except _DAMAGED as e:
        raise BundleError(f"{zpath}: damaged zip, entry {info.filename!r} ({e})") from None


def _open_zip(zpath: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BundleError(f"{zpath}: damaged zip ({e})") from None


def _refuse_oversized(zpath: Path, dest: Path, total: int) -> None:
    """Refuse before writing a byte: an archive that unpacks to far more than its own size (a zip bomb
    with a manifest that lists it), or to more than the destination's free space."""
    size = zpath.stat().st_size
    if total > MAX_UNPACK_RATIO * max(size, 1 << 20):
        raise BundleError(
            f"{zpath}: its manifest lists {total} bytes, {total / max(size, 1):.0f}x the {size}-byte zip "
            f"(more than {MAX_UNPACK_RATIO}x: a compression bomb, not an export); refused"
        )
    free = shutil.disk_usage(dest.parent if dest.parent.exists() else zpath.parent).free
    if total > free:
        raise BundleError(f"{zpath}: unpacks to {total} bytes, {dest.parent} has {free} free; refused")


def _copy_capped(src: Any, out: Any, limit: int, where: str) -> None:
    n = 0
    while chunk := src.read(_CHUNK):
        n += len(chunk)
        if n > limit:
            raise BundleError(f"{where}: unpacks to more than its declared {limit} bytes; refused")
        out.write(chunk)


def _same_stamp(dest: Path, stamp: dict[str, Any]) -> bool:
    try:
        return json.loads((dest / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _swap_in(tmp: Path, dest: Path, stamp: dict[str, Any], zpath: Path) -> None:
    """Rename ``tmp`` to ``dest``. When a concurrent loader already put the same extraction there,
    ours is dropped (theirs may be in use); an older extraction is moved aside first and removed."""
    if _same_stamp(dest, stamp):
        return
    _refuse_foreign(dest, zpath)  # again: something may have appeared there while we extracted
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name, "old"), dir=dest.parent))
        try:
            os.replace(dest, old / "x")
        except FileNotFoundError:  # another loader moved it already
            pass
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / "manifest.json").is_file():  # not a concurrent loader's finished extraction
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def zip_bundle(folder: Path, out: Path) -> Path:
    """Zip a bundle folder (stored, not deflated: GGUF/ONNX weights do not compress), atomically."""
    sweep_stale(out.parent, out.name)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(out.name, "tmp"), suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            for p in sorted(folder.rglob("*")):
                if p.is_symlink():
                    raise BundleError(f"{p}: is a symbolic link; bundles hold plain files only")
                if p.is_file() and p.name != _STAMP:
                    z.write(p, p.relative_to(folder).as_posix())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
