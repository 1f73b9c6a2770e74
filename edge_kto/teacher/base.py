"""The Teacher interface every backend implements, and the config that picks one.

A teacher turns chat messages into ``n`` sampled answers. Backends differ in how they batch
(transformers pads a batch, llama.cpp decodes many sequences per weight pass, an HTTP server takes
parallel requests), so the generate stage hands them a list of requests and lets each backend
decide; :meth:`Teacher.stream` hands answers back as they finish, so the stage can save each one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from edge_kto_runtime.defaults import MAX_NEW_TOKENS
from edge_kto_runtime.errors import InvalidInput
from edge_kto_runtime.plugins import import_target

from ..data import Messages


@dataclass
class SamplingParams:
    n: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = MAX_NEW_TOKENS
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TeacherConfig:
    """Which teacher. ``kind``: a key of ``TEACHERS`` ("hf", "gguf", "openai")."""

    kind: str = "gguf"
    model: str = "smollm2-135m-instruct"
    base_url: str | None = None  # openai: e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4  # openai: requests in flight
    timeout_s: float = 120.0
    max_retries: int = 4
    # hf: prompts per padded batch. 16 on 2 cores (the demo student, 80 eval prompts, 96 tokens): greedy
    # 30.6 s at 8 -> 24.7 s at 16 (25.8 s at 32); sampled 76.4 -> 57.8 s (51.9 s at 32)
    batch_size: int = 16
    n_ctx: int = 4096  # gguf
    n_threads: int | None = None  # gguf: default = all cores
    parallel: int = 8  # gguf: sequences decoded together (continuous batching); 1 = one at a time
    name: str | None = None  # provenance label; default derived from model

    def validate(self) -> None:
        if self.kind not in TEACHERS:
            raise InvalidInput(f"kind: one of {', '.join(TEACHERS)}, got {self.kind!r}")
        if not 1 <= self.parallel <= 256:
            raise InvalidInput(f"parallel: 1..256, got {self.parallel}")

    def display_name(self) -> str:
        return self.name or f"{self.kind}:{self.model}"


@dataclass
class GenRequest:
    """One prompt and the sample indices still wanted for it (resume drops finished ones)."""

    key: str
    messages: Messages
    sample_indices: list[int] = field(default_factory=lambda: [0])


def sample_seed(base_seed: int, key: str, index: int) -> int:
    """A per-sample seed that depends only on (seed, prompt id, sample index): resumes reproduce."""
    digest = hashlib.sha256(f"{base_seed}:{key}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Teacher(ABC):
    """A sampler of answers. ``batch_size`` is how many requests :meth:`generate` wants at once."""

    name: str = "teacher"
    batch_size: int = 1

    @abstractmethod
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[list[str]]:
        """Return, for each request, one completion per entry of ``sample_indices``, in order."""

    def stream(self, requests: list[GenRequest], params: SamplingParams) -> Iterator[tuple[int, int, str]]:
        """Yield ``(request index, sample index, completion)`` as answers finish, in any order.

        The default calls :meth:`generate` ``batch_size`` requests at a time; a backend that
        schedules many sequences itself (llama.cpp's continuous batching) overrides it.
        """
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            for i, (req, texts) in enumerate(zip(chunk, self.generate(chunk, params))):
                for k, text in zip(req.sample_indices, texts):
                    yield start + i, k, text

    def close(self) -> None:
        pass

    def __enter__(self) -> "Teacher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Teacher backends by ``TeacherConfig.kind``, imported when used. A new backend: one file with a
#: :class:`Teacher` subclass taking a ``TeacherConfig``, plus one line here.
TEACHERS: dict[str, str] = {
    "hf": "edge_kto.teacher.hf:HFTeacher",  # transformers, local folder or hub id
    "gguf": "edge_kto.teacher.llamacpp:LlamaCppTeacher",  # llama.cpp
    "openai": "edge_kto.teacher.openai_http:OpenAITeacher",  # any OpenAI-compatible HTTP server
}


def make_teacher(cfg: TeacherConfig) -> Teacher:
    cfg.validate()
    return import_target(TEACHERS[cfg.kind], "teacher")(cfg)
