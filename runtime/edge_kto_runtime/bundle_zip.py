"""Zipped bundles: ``edge-kto export --zip`` writes them, every loader extracts them here.

Extraction is the dangerous half: an archive comes from anywhere. Nothing is written outside the
destination, only the files the zip's own manifest lists (each at its listed size), never more than
the zip could honestly hold, and never over anything the loader did not create itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from .atomic import sweep_stale, temp_prefix
from .bundle import _CHUNK, BundleError, _safe_rel, parse_manifest

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
    except _DAMAGED as e:  # also NotImplementedError: "zip file version 6.4" in a damaged directory record
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
