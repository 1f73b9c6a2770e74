"""edge-kto-runtime: load an edge-kto bundle on a device and run it, without torch.

This package never imports torch, transformers or peft (a test enforces it). Backends are
optional extras: ``[llamacpp]`` (llama-cpp-python) and ``[onnx]`` (onnxruntime-genai).

    from edge_kto_runtime import load
    m = load("bundle/")                      # verifies the manifest and every sha256
    m.chat([{"role": "user", "content": "hi"}], max_new_tokens=64)
    for piece in m.stream(messages): ...
    m.score(messages, "an answer")           # summed log-prob
"""

from .bundle import SCHEMA_VERSION, Bundle, BundleError, open_bundle
from .model import Completion, ContextOverflow, EdgeModel, load

__version__ = "0.1.0"
__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "BundleError",
    "Completion",
    "ContextOverflow",
    "EdgeModel",
    "load",
    "open_bundle",
]
