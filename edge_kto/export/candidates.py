"""Candidate artifacts: what export may build, each a typed recipe with a stable file name.

A pipeline or ``edge-kto export`` lists candidates per format; each becomes one artifact in the
bundle (``select: all``) or competes for the single slot of its format (``select:
smallest-passing``: the smallest that passes the alignment gate is kept). A candidate is given as
a plain type name (``Q4_K_M``) or a mapping with the options below, e.g.::

    gguf: [Q4_0, {type: IQ4_NL, imatrix: true, tensor_types: {ffn_down: Q6_K, "attn_[kv]": Q8_0}}]
    onnx: [{accuracy_level: 4}, {accuracy_level: 1, int8_layers: true}]
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edge_kto_runtime.errors import InvalidInput

SELECT_MODES = ("all", "smallest-passing")
ONNX_ALGOS = ("default", "rtn", "k_quant")
#: The onnxruntime-genai builder's ``-p`` values that run on the CPU provider. A new one the builder
#: gains is one entry here; the candidate options below that say "int4" apply to int4 only.
ONNX_PRECISIONS = ("int4", "int8", "fp32")


class CandidateError(InvalidInput):
    """A candidate spec that cannot be built (names the candidate and the field)."""


def _ggml_types() -> set[str]:
    import llama_cpp

    return {n[len("GGML_TYPE_") :] for n in dir(llama_cpp) if n.startswith("GGML_TYPE_") and n != "GGML_TYPE_COUNT"}


def llama_ftypes() -> set[str]:
    import llama_cpp

    return {n[len("LLAMA_FTYPE_MOSTLY_") :] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")} | {"F32"}


@dataclass
class GgufCandidate:
    """One llama.cpp quantization: an ftype plus per-tensor overrides and an optional imatrix."""

    type: str  # llama.cpp ftype: Q4_0, Q4_K_M, IQ4_NL, Q8_0, F16, F32, ...
    imatrix: bool = False  # weight rounding by the task-calibrated importance matrix
    tensor_types: dict[str, str] = field(default_factory=dict)  # regex on GGUF tensor names -> GGML type
    token_embedding_type: str | None = None  # GGML type of token_embd (also the output layer when tied)
    output_type: str | None = None
    pure: bool | None = None  # no per-layer type mix; None: True for a finished model's own grid
    name: str | None = None  # file stem; default from the options

    @property
    def path(self) -> str:
        if self.name:
            return f"{self.name}.gguf"
        tag = self.type.lower()
        if self.imatrix:
            tag += "-imat"
        if self.tensor_types or self.token_embedding_type or self.output_type:
            tag += "-mix"
        if self.pure:
            tag += "-pure"
        return f"model-{tag}.gguf"

    def validate(self) -> None:
        ftypes, ggml = llama_ftypes(), _ggml_types()
        if self.type not in ftypes:
            raise CandidateError(f"gguf candidate {self.type!r}: unknown type; llama.cpp knows {sorted(ftypes)}")
        for pattern, t in self.tensor_types.items():
            try:
                re.compile(pattern)
            except re.error as e:
                raise CandidateError(
                    f"gguf candidate {self.type}: tensor_types regex {pattern!r} is invalid: {e}"
                ) from None
            if str(t).upper() not in ggml:
                raise CandidateError(
                    f"gguf candidate {self.type}: tensor_types[{pattern!r}] = {t!r} is not a GGML type; "
                    f"known: {sorted(ggml)}"
                )
        for key in ("token_embedding_type", "output_type"):
            v = getattr(self, key)
            if v is not None and v.upper() not in ggml:
                raise CandidateError(
                    f"gguf candidate {self.type}: {key} {v!r} is not a GGML type; known: {sorted(ggml)}"
                )


@dataclass
class OnnxCandidate:
    """One onnxruntime-genai builder run (int4: MatMulNBits with the options below)."""

    precision: str = "int4"  # int4 | int8 | fp32 (the builder's -p)
    int8_head: bool = True  # LM head at int8 (last_matmul:int8); the int4 head costs sub-1B models most
    accuracy_level: int = 4  # 4: int8 activations (fast, CPU default); 1: fp32 activations (exact to torch)
    algo_config: str = "default"  # default (symmetric RTN == GGUF Q4_0 grid), rtn, k_quant
    block_size: int = 32
    int8_layers: bool = False  # mixed_layers:int8 (llama.cpp-style sensitive layers at int8)
    # The int8 LM head's accuracy_level. None: 4 (int8 activations) whatever the body's level, since
    # onnxruntime 1.32's CPU MatMulNBits has no fp32-compute kernel for 8-bit weights: at level 1 the
    # demo's 576x49152 head took 130 ms of a 140 ms decode step, at level 4 the step takes 17 ms, with
    # the same gate numbers (benchmarks/RESULTS.md). Set it to the body's level for an exact fp32 graph.
    head_accuracy_level: int | None = None
    # The token embedding and LM head left unquantized (one fp32 table when tied; otherwise the input
    # embedding is int4 and the head int8): the fp weights' own at 4 bytes per weight; a larger file,
    # so tried after the smaller candidates of the format.
    fp32_embeddings: bool = False
    name: str | None = None

    @property
    def head_level(self) -> int | None:
        """The LM head node's accuracy_level after the build (None: the head is not int8 MatMulNBits)."""
        if self.precision != "int4" or not self.int8_head or self.fp32_embeddings:
            return None
        return 4 if self.head_accuracy_level is None else self.head_accuracy_level

    @property
    def path(self) -> str:
        if self.name:
            return f"{self.name}/"
        if self.precision != "int4":
            return f"onnx-{self.precision}/"
        tag = "onnx-int4"
        if self.block_size != 32:
            tag += f"-b{self.block_size}"
        if self.algo_config != "default":
            tag += f"-{self.algo_config.replace('_', '')}"
        if self.accuracy_level != 4:
            tag += f"-acc{self.accuracy_level}"
        if self.int8_layers:
            tag += "-int8layers"
        if self.fp32_embeddings:
            tag += "-fp32emb"
        elif not self.int8_head:
            tag += "-int4head"
        if self.head_accuracy_level is not None and self.head_level != 4:
            tag += f"-headacc{self.head_level}"
        return f"{tag}/"

    @property
    def quant(self) -> str:
        if self.precision != "int4":
            return self.precision
        head = "-fp32emb" if self.fp32_embeddings else "-int8head" if self.int8_head else ""
        q = f"int4-b{self.block_size}" + head
        if self.algo_config != "default":
            q += f"-{self.algo_config}"
        if self.int8_layers:
            q += "-int8layers"
        q += f"-acc{self.accuracy_level}" if self.accuracy_level != 4 else ""
        return q + (f"-headacc{self.head_level}" if self.head_level not in (None, 4) else "")

    def validate(self) -> None:
        if self.precision not in ONNX_PRECISIONS:
            raise CandidateError(f"onnx candidate: precision must be one of {ONNX_PRECISIONS}, got {self.precision!r}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise CandidateError(f"onnx candidate: accuracy_level must be 0-4, got {self.accuracy_level!r}")
        if self.head_accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise CandidateError(f"onnx candidate: head_accuracy_level must be 0-4, got {self.head_accuracy_level!r}")
        if self.algo_config not in ONNX_ALGOS:
            raise CandidateError(f"onnx candidate: algo_config must be one of {ONNX_ALGOS}, got {self.algo_config!r}")
        if self.fp32_embeddings and (self.precision != "int4" or self.head_accuracy_level is not None):
            raise CandidateError("onnx candidate: fp32_embeddings applies to int4 builds, without head_accuracy_level")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise CandidateError(f"onnx candidate: block_size must be 16/32/64/128/256, got {self.block_size!r}")


def _from_mapping(cls: type, spec: dict[str, Any], what: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise CandidateError(f"{what} candidate {spec}: unknown option(s) {unknown}; known: {sorted(known)}")
    return cls(**spec)


def parse_gguf(spec: str | dict[str, Any] | GgufCandidate) -> GgufCandidate:
    if isinstance(spec, GgufCandidate):
        c = spec
    elif isinstance(spec, str):
        c = GgufCandidate(type=spec)
    elif isinstance(spec, dict):
        c = _from_mapping(GgufCandidate, spec, "gguf")
    else:
        raise CandidateError(f"gguf candidate: a type name or a mapping, got {spec!r}")
    c.type = str(c.type).upper()
    c.tensor_types = {str(k): str(v).upper() for k, v in (c.tensor_types or {}).items()}
    c.validate()
    return c


def parse_onnx(spec: bool | list | dict[str, Any] | None, int8_head: bool = True) -> list[OnnxCandidate]:
    """``True`` = the default candidate, ``False``/None = no ONNX, a mapping or a list of them."""
    if spec is None or spec is False:
        return []
    if spec is True:
        spec = [{}]
    if isinstance(spec, dict):
        spec = [spec]
    out = []
    for s in spec:
        c = (
            s
            if isinstance(s, OnnxCandidate)
            else _from_mapping(OnnxCandidate, {"int8_head": int8_head, **(s or {})}, "onnx")
        )
        c.validate()
        out.append(c)
    return out


def describe(c: GgufCandidate | OnnxCandidate) -> dict[str, Any]:
    """The recipe as recorded in the manifest."""
    d = asdict(c)
    if isinstance(c, OnnxCandidate):
        d["head_accuracy_level"] = c.head_level  # the level the head was built at, default resolved
    if isinstance(c, OnnxCandidate) and c.fp32_embeddings:
        d["int8_head"] = False
    return {k: v for k, v in d.items() if v not in (None, {}, False) or k in ("imatrix", "int8_head")}
