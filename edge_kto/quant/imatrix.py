"""Task-calibrated importance matrices for llama.cpp's quantizer, computed in Python.

An importance matrix is, per quantized weight tensor, the mean of x² over the calibration
tokens for each *input* column x of that Linear: llama.cpp's quantizers weight their rounding
error by it, so the columns that carry the task's activations are kept most exactly
(ggml-org/llama.cpp PR 4861). ``llama-imatrix`` computes it from a GGUF; we compute the same
quantity with forward hooks on the fp student over chat-rendered *training* prompts + answers
(never the eval split), which needs no C++ build.

The file format is llama.cpp's own GGUF imatrix (``general.type = imatrix``; per tensor
``<name>.in_sum2`` [n_cols] and ``<name>.counts`` [1]), so a file written here works with
``llama-quantize --imatrix`` and one written by ``llama-imatrix`` works here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_kto_runtime.errors import InvalidInput

# HF Llama-family module names -> GGUF tensor names (llama.cpp's tensor map for LLaMA / Qwen2 / SmolLM).
_HF_TO_GGUF = [
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.q_proj$"), "blk.{}.attn_q.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.k_proj$"), "blk.{}.attn_k.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.v_proj$"), "blk.{}.attn_v.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj$"), "blk.{}.attn_output.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.gate_proj$"), "blk.{}.ffn_gate.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.up_proj$"), "blk.{}.ffn_up.weight"),
    (re.compile(r"^model\.layers\.(\d+)\.mlp\.down_proj$"), "blk.{}.ffn_down.weight"),
]


class ImatrixError(InvalidInput):
    """An importance matrix that cannot be used with this model (names the file and tensor)."""


def gguf_name(hf_module: str) -> str | None:
    for pat, fmt in _HF_TO_GGUF:
        m = pat.match(hf_module)
        if m:
            return fmt.format(m.group(1))
    return None


@dataclass
class Imatrix:
    """Per GGUF tensor name: summed x² per input column and the number of tokens summed."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    tokens: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What ``llama_model_quantize`` takes: the per-column mean of x², float32."""
        return {k: (v / max(self.counts[k], 1)).astype(np.float32) for k, v in self.sums.items()}

    def check_shapes(self, expected: dict[str, int], where: str = "imatrix") -> None:
        """Refuse entries whose column count differs from the model's tensor (llama.cpp would abort)."""
        bad = [
            f"{k}: {v.size} values, the model's tensor has {expected[k]} input columns"
            for k, v in self.sums.items()
            if k in expected and v.size != expected[k]
        ]
        bad += [f"{k}: non-finite values" for k, v in self.sums.items() if not np.isfinite(v).all()]
        if bad:
            raise ImatrixError(f"{where}: does not fit this model:\n  " + "\n  ".join(bad[:10]))
        if not set(self.sums) & set(expected):
            raise ImatrixError(
                f"{where}: none of its {len(self.sums)} tensor names are in the model "
                f"(e.g. {next(iter(self.sums), '-')!r} vs {next(iter(expected), '-')!r})"
            )


def compute_imatrix(model: Any, sequences: list[list[int]], progress: bool = True, dataset: str = "") -> Imatrix:
    """Forward ``sequences`` (token ids) through the fp model; accumulate x² per input column."""
    import torch
    from tqdm.auto import tqdm

    from .fake import quantizable_linears

    im = Imatrix(datasets=[dataset] if dataset else [])
    hooks = []

    def hook(name: str):
        def fn(_mod: Any, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            s = (x * x).sum(0).numpy()
            im.sums[name] = im.sums.get(name, 0) + s
            im.counts[name] = im.counts.get(name, 0) + x.shape[0]

        return fn

    for hf_name, mod in quantizable_linears(model).items():
        g = gguf_name(hf_name)
        if g is not None:
            hooks.append(mod.register_forward_pre_hook(hook(g)))
    if not hooks:
        raise ImatrixError(f"{type(model).__name__}: no Llama-family linear layers found to calibrate")
    model.eval()
    try:
        with torch.no_grad():
            for ids in tqdm(sequences, desc="importance matrix", unit="seq", disable=not progress):
                model(input_ids=torch.tensor([ids]), use_cache=False)
                im.tokens += len(ids)
    finally:
        for h in hooks:
            h.remove()
    im.sums = {k: np.asarray(v, dtype=np.float64) for k, v in im.sums.items()}
    return im


def write_imatrix(im: Imatrix, path: str | Path) -> Path:
    """llama.cpp's GGUF imatrix format (what ``llama-imatrix -o x.gguf`` writes)."""
    import gguf

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch="", endianess=gguf.GGUFEndian.LITTLE)
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", im.datasets or ["edge-kto"])
    w.add_uint32("imatrix.chunk_count", 1)
    w.add_uint32("imatrix.chunk_size", max(im.tokens, 1))
    for name in sorted(im.sums):
        w.add_tensor(f"{name}.in_sum2", im.sums[name].astype(np.float32))
        w.add_tensor(f"{name}.counts", np.array([float(im.counts[name])], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def read_imatrix(path: str | Path) -> Imatrix:
    """Read a GGUF imatrix (ours or llama-imatrix's); a file that is not one is refused by name."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ImatrixError(f"{path}: no such importance matrix file")
    try:
        r = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a GGUF imatrix"
        raise ImatrixError(f"{path}: not a GGUF importance matrix ({e})") from None
    try:
        return _imatrix_from(r, path)
    except (IndexError, KeyError, TypeError, ValueError) as e:  # UnicodeDecodeError too: a damaged field
        raise ImatrixError(f"{path}: a damaged GGUF importance matrix ({type(e).__name__}: {e})") from None


def _imatrix_from(r: Any, path: Path) -> Imatrix:
    kind = r.fields.get("general.type")
    if kind is None or bytes(kind.parts[kind.data[0]]).decode() != "imatrix":
        raise ImatrixError(f"{path}: a GGUF file but not an importance matrix (general.type != imatrix)")
    tensors = {t.name: np.array(t.data, dtype=np.float64).reshape(-1) for t in r.tensors}
    im = Imatrix()
    for name, data in tensors.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            cnt = tensors.get(f"{base}.counts")
            if cnt is None or cnt.size != 1:
                raise ImatrixError(f"{path}: tensor {base}: counts missing or not one value per matrix")
            im.sums[base], im.counts[base] = data, int(cnt[0])
    ds = r.fields.get("imatrix.datasets")
    if ds is not None:
        im.datasets = [bytes(ds.parts[i]).decode("utf-8", "replace") for i in ds.data]
    size = r.fields.get("imatrix.chunk_size")
    im.tokens = int(size.parts[size.data[0]][0]) if size is not None else 0
    return im
