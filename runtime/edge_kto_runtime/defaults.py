"""The one place each shared default lives (server side and device side import these).

Why a module of constants: the same number used to be written as a literal in a dozen files and
they drifted (the pipeline benched 100 runs while the CLI said 200, answers were cut at 64, 128 or
256 tokens depending on who asked). A default used by more than one module belongs here.
"""

from __future__ import annotations

#: Tokens of an answer: teacher sampling, student sampling, evaluation, ``edge-runtime generate``.
MAX_NEW_TOKENS = 128

#: Tokens the alignment gate decodes greedily per golden prompt (fp vs artifact continuation).
GOLDEN_MAX_NEW_TOKENS = 64

#: A bundle's generation default (manifest ``generation.max_new_tokens``): what the device uses
#: when a request gives no limit. Longer than MAX_NEW_TOKENS so a chat answer is not cut.
DEVICE_MAX_NEW_TOKENS = 256

#: Context a bundle's artifacts are loaded with unless the caller says otherwise.
N_CTX = 2048

#: Latency benchmark: measured runs, warm-up runs, prompt and generated tokens per run.
#: 200 runs put ~2 samples above the P99; the Android app's shorter run says so in its own comment.
BENCH_RUNS = 200
BENCH_WARMUP = 5
BENCH_N_PROMPT = 128
BENCH_N_GEN = 64


def default_threads() -> int:
    """Threads for llama.cpp / onnxruntime work: physical cores (decode is memory-bound; SMT
    siblings slow it down). One policy for the runtime, the teacher and the quantizer."""
    from .backends import physical_cores

    return physical_cores()
