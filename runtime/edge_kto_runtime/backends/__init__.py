"""Inference backends behind one small interface (``Backend``) and the registry that names them (``BACKENDS``).

Each backend takes token ids in and gives token ids (or logits) out; chat templates, stop
strings, UTF-8 streaming and scoring live above them in :mod:`edge_kto_runtime.model`, so both
backends behave identically there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from ..errors import InvalidInput, MissingDependency


class BackendMissing(MissingDependency):
    pass


@dataclass(frozen=True)
class BackendSpec:
    """A runtime backend as the registry knows it, before anything heavy is imported.

    ``name`` is the manifest's ``artifacts[].backend``; ``target`` the ``module:Class`` opened with
    ``(path, n_ctx, n_threads)``; ``requires`` the module whose absence means "not installed" and
    ``extra`` the pip extra that installs it; ``aliases`` more ``--backend`` names;
    ``prefix_cache``: it keeps KV state between requests (``save_prefix`` / ``load_prefix``).
    """

    name: str
    target: str
    requires: str
    extra: str
    aliases: tuple[str, ...] = ()
    prefix_cache: bool = False

    def installed(self) -> bool:
        try:
            __import__(self.requires)  # the backend is opened next anyway; a real import also catches broken installs
        except ImportError:
            return False
        return True

    def open(self, path: Path, n_ctx: int, n_threads: int) -> "Backend":
        from ..plugins import import_target

        if not self.installed():  # an artifact named explicitly: the same install hint as auto selection
            raise BackendMissing(
                f"the {self.name} backend is not installed: pip install 'edge-kto-runtime[{self.extra}]'"
            )
        return import_target(self.target, "backend")(path, n_ctx, n_threads)


#: Every backend, in the order ``--backend auto`` tries them. A new backend: one file + one line here
#: (or ``register_backend(...)`` from a plugin).
BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    BACKENDS[spec.name] = spec
    return spec


register_backend(
    BackendSpec(
        "llama.cpp",
        "edge_kto_runtime.backends.llamacpp:LlamaCppBackend",
        "llama_cpp",
        "llamacpp",
        ("gguf",),
        prefix_cache=True,
    )
)
register_backend(
    BackendSpec(
        "onnxruntime-genai", "edge_kto_runtime.backends.onnx:OnnxGenaiBackend", "onnxruntime_genai", "onnx", ("onnx",)
    )
)


def backend_names() -> list[str]:
    """What ``--backend`` accepts: auto, every backend's name and its aliases."""
    return ["auto", *[n for s in BACKENDS.values() for n in (s.name, *s.aliases)]]


def resolve_backends(name: str) -> list[BackendSpec]:
    """The backends ``--backend NAME`` allows, in preference order."""
    if name == "auto":
        return list(BACKENDS.values())
    for s in BACKENDS.values():
        if name == s.name or name in s.aliases:
            return [s]
    raise InvalidInput(f"backend must be one of {backend_names()}, got {name!r}")


class Backend(Protocol):
    name: str
    n_ctx: int
    n_vocab: int

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """No BOS added. ``special=False``: control-token text (``<|im_start|>``) stays plain text."""

    def detokenize(self, ids: list[int]) -> bytes: ...

    def generate_ids(
        self, ids: list[int], max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None
    ) -> Iterator[int]: ...

    def logits(self, ids: list[int], positions: list[int]) -> np.ndarray: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def physical_cores() -> int:
    """Physical cores (not hyper-threads): decode is memory-bound and SMT siblings slow it down."""
    import os

    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "physical id":
                    phys = v.strip()
                elif k == "core id":
                    core = v.strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    phys = core = None
        if core is not None:
            pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1
