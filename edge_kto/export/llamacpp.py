"""GGUF with llama.cpp's own tools: ``convert_hf_to_gguf.py`` writes f16/f32, then
``llama_cpp.llama_model_quantize`` (the library behind ``llama-quantize``) makes each type.

The converter comes from the llama-cpp-python *sdist* of the installed version, so its GGUF
writer (``gguf-py``) and model tables match the llama.cpp that will load the file. It is
fetched once (``edge-kto export --prepare``, run by scripts/setup.sh) into
``$EDGE_KTO_CACHE/llama.cpp-convert/<version>/``; after that export runs offline. Set
``EDGE_KTO_LLAMA_CPP_DIR`` to a llama.cpp checkout to use its converter instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_kto_runtime.defaults import default_threads
from edge_kto_runtime.errors import InvalidInput, MissingDependency, ToolError

from ..models.fetch import cache_root

log = logging.getLogger(__name__)

# Types whose blocks span 256 weights; a row width not divisible by 256 falls back to a legacy type.
K_QUANTS = {"Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"}
LEGACY = {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


class ConverterMissing(MissingDependency):
    pass


@dataclass
class Converter:
    script: Path
    pythonpath: list[Path]
    llama_cpp_version: str
    llama_cpp_commit: str | None
    gguf_py_version: str | None


def _installed_llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def _converter_dir(version: str) -> Path:
    return cache_root() / "llama.cpp-convert" / version


def _changelog_commit(changelog: str, version: str) -> str | None:
    """llama-cpp-python's CHANGELOG names the llama.cpp commit each release vendors."""
    section = changelog.split(f"## [{version}]", 1)[-1].split("\n## [", 1)[0]
    m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", section)
    return m.group(1) if m else None


def prepare_converter(version: str | None = None) -> Converter:
    """Fetch (once, needs PyPI) and unpack the converter matched to the installed llama.cpp."""
    version = version or _installed_llama_cpp_version()
    dest = _converter_dir(version)
    if not (dest / "source.json").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"llama-cpp-python=={version}",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--disable-pip-version-check",
                "-q",
                "-d",
                tmp,
            ]
            p = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if p.returncode or not sdists:
                raise ConverterMissing(
                    f"could not fetch the llama-cpp-python {version} sdist for llama.cpp's converter "
                    f"(needs PyPI once; then export is offline): {p.stderr.strip()[-400:]}. "
                    f"Or set EDGE_KTO_LLAMA_CPP_DIR to a llama.cpp checkout."
                )
            _unpack_converter(sdists[0], dest, version)
    return _load_converter(dest)


def _unpack_converter(sdist: Path, dest: Path, version: str) -> None:
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    commit = None
    with tarfile.open(sdist) as tar:
        root = tar.getmembers()[0].name.split("/")[0]
        vendor = f"{root}/vendor/llama.cpp/"
        members = [
            m
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith(vendor) and m.name[len(vendor) :].startswith(wanted)
        ]
        for m in members:
            m.name = m.name[len(vendor) :]
        tar.extractall(tmp, members=members, filter="data")
        log = tar.extractfile(f"{root}/CHANGELOG.md")
        if log is not None:
            commit = _changelog_commit(log.read().decode("utf-8", "replace"), version)
    (tmp / "source.json").write_text(
        json.dumps({"llama_cpp_python": version, "llama_cpp_commit": commit, "sdist": sdist.name}, indent=2)
    )
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def _gguf_py_version(gguf_py: Path) -> str | None:
    m = (
        re.search(r'^version\s*=\s*"([^"]+)"', (gguf_py / "pyproject.toml").read_text(), re.M)
        if (gguf_py / "pyproject.toml").exists()
        else None
    )
    return m.group(1) if m else None


def _load_converter(dest: Path) -> Converter:
    src = json.loads((dest / "source.json").read_text())
    return Converter(
        dest / "convert_hf_to_gguf.py",
        [dest, dest / "gguf-py"],
        src["llama_cpp_python"],
        src.get("llama_cpp_commit"),
        _gguf_py_version(dest / "gguf-py"),
    )


def find_converter() -> Converter:
    """The converter to use: $EDGE_KTO_LLAMA_CPP_DIR, else the prepared one for the installed llama.cpp."""
    env = os.environ.get("EDGE_KTO_LLAMA_CPP_DIR")
    if env:
        d = Path(env)
        if not (d / "convert_hf_to_gguf.py").is_file():
            raise ConverterMissing(f"EDGE_KTO_LLAMA_CPP_DIR={d}: no convert_hf_to_gguf.py there")
        return Converter(
            d / "convert_hf_to_gguf.py", [d, d / "gguf-py"], "custom", None, _gguf_py_version(d / "gguf-py")
        )
    dest = _converter_dir(_installed_llama_cpp_version())
    if (dest / "source.json").is_file():
        return _load_converter(dest)
    return prepare_converter()


def convert_hf_to_gguf(hf_dir: Path, out: Path, outtype: str = "f16", conv: Converter | None = None) -> float:
    """Run llama.cpp's converter; returns its wall time in seconds."""
    conv = conv or find_converter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(p) for p in conv.pythonpath] + [os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
    }
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(conv.script), str(hf_dir), "--outfile", str(out), "--outtype", outtype],
        env=env,
        capture_output=True,
        text=True,
    )
    if p.returncode or not out.is_file():
        raise ToolError(f"llama.cpp convert_hf_to_gguf.py failed on {hf_dir}:\n{(p.stderr or p.stdout)[-3000:]}")
    return time.perf_counter() - t


def quantize_gguf(
    src: Path,
    out: Path,
    qtype: str,
    threads: int | None = None,
    *,
    imatrix: dict[str, Any] | None = None,
    tensor_types: dict[str, str] | None = None,
    token_embedding_type: str | None = None,
    output_type: str | None = None,
    pure: bool = False,
) -> float:
    """``llama_model_quantize`` to ``qtype`` (e.g. Q4_K_M); returns its wall time in seconds.

    ``imatrix`` maps GGUF tensor names to per-column mean x² (see :mod:`edge_kto.quant.imatrix`);
    ``tensor_types`` maps regexes on tensor names to GGML types (llama-quantize's
    ``--tensor-type``; the first match wins, and llama.cpp still falls back from a 256-block type
    on rows that are not a multiple of 256). Arrays handed to C are kept alive until it returns.
    """
    import llama_cpp
    import numpy as np

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}", None)
    if ftype is None:
        known = sorted(n[len("LLAMA_FTYPE_MOSTLY_") :] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise InvalidInput(f"unknown GGUF quantization type {qtype!r}; llama.cpp knows {known}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or default_threads()
    params.pure = bool(pure)
    if token_embedding_type:
        params.token_embedding_type = _ggml_type(token_embedding_type)
    if output_type:
        params.output_tensor_type = _ggml_type(output_type)
    keep: list = []  # bytes and arrays referenced by the C structs
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed sentinel: name == NULL
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32)
            b = name.encode()
            keep += [b, v]
            arr[i].name, arr[i].data, arr[i].size = b, v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if tensor_types:
        _check_patterns(src, tensor_types)
        ov = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (pattern, t) in enumerate(tensor_types.items()):
            b = pattern.encode()
            keep.append(b)
            ov[i].pattern, ov[i].type = b, _ggml_type(t)
        keep.append(ov)
        params.tt_overrides = ctypes.cast(ov, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    # llama-cpp-python routes llama.cpp's log through this logger; the quantizer also writes
    # per-tensor lines straight to stderr. Both are kept out of the terminal unless debugging.
    lg = logging.getLogger("llama-cpp-python")
    level = lg.level
    lg.setLevel(logging.ERROR if not log.isEnabledFor(logging.DEBUG) else logging.DEBUG)
    t = time.perf_counter()
    try:
        with _stderr_to_file() as captured:
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        lg.setLevel(level)
    del keep
    if rc != 0 or not out.is_file():
        raise ToolError(f"llama_model_quantize({src.name} -> {qtype}) failed with code {rc}:\n{captured.text[-2000:]}")
    return time.perf_counter() - t


def _ggml_type(name: str) -> int:
    import llama_cpp

    v = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
    if v is None:
        known = sorted(
            n[len("GGML_TYPE_") :] for n in dir(llama_cpp) if n.startswith("GGML_TYPE_") and n != "GGML_TYPE_COUNT"
        )
        raise InvalidInput(f"unknown GGML tensor type {name!r}; known: {known}")
    return int(v)


def gguf_tensor_shapes(path: Path) -> dict[str, int]:
    """Tensor name -> row width (ne[0], the input columns of a weight) of a GGUF file."""
    from gguf import GGUFReader

    return {t.name: int(t.shape[0]) for t in GGUFReader(str(path)).tensors}


def _check_patterns(src: Path, tensor_types: dict[str, str]) -> None:
    """Every override regex must match some tensor of the model: a typo otherwise does nothing silently."""
    names = list(gguf_tensor_shapes(src))
    for pattern in tensor_types:
        if not any(re.search(pattern, n) for n in names):
            raise InvalidInput(
                f"tensor_types: regex {pattern!r} matches no tensor of {src.name} "
                f"(names look like {names[min(5, len(names) - 1)]!r})"
            )


class _Captured:
    text = ""


@contextlib.contextmanager
def _stderr_to_file():
    """Redirect the process's fd 2 (C code writes there directly) into a temp file."""
    cap = _Captured()
    if log.isEnabledFor(logging.DEBUG):
        yield cap
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield cap
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            cap.text = f.read().decode("utf-8", "replace")


@dataclass
class GGUFStats:
    bits_per_weight: float
    n_params: int
    tensor_types: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0  # weight tensors a K-quant could not use (row width not a multiple of 256)


def gguf_stats(path: Path, requested: str) -> GGUFStats:
    """Effective bits per weight over all tensors, the type histogram, and K-quant fallbacks."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    types: Counter[str] = Counter()
    n_el = n_bytes = fallbacks = 0
    for t in r.tensors:
        name = t.tensor_type.name
        types[name] += 1
        n_el += int(t.n_elements)
        n_bytes += int(t.n_bytes)
        if requested.upper() in K_QUANTS and len(t.shape) >= 2 and name in LEGACY:
            fallbacks += 1
    return GGUFStats(round(8 * n_bytes / max(n_el, 1), 3), n_el, dict(types), fallbacks)
