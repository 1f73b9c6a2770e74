"""ONNX int4 with onnxruntime-genai's own model builder (MatMulNBits, block 32, symmetric, CPU).

``int8_head`` keeps the last MatMul (the LM head) at int8 via the builder's
``matmul_mixed_precision=last_matmul:int8``; on sub-1B models the int4 head costs most of the
quality (see benchmarks/RESULTS.md). With tied embeddings, onnxruntime-genai 0.18's builder
writes an invalid graph for that combination when the table is shared
("lm_head.MatMul.weight_Q8G32 is not a graph input"), so the embedding is untied and quantized
on its own (int4 ``GatherBlockQuantized``) — a few MB more than sharing one int4 table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def onnx_quant_label(int8_head: bool, block_size: int = 32) -> str:
    return f"int4-b{block_size}" + ("-int8head" if int8_head else "")


def build_onnx(hf_dir: Path, out_dir: Path, precision: str = "int4", int8_head: bool = True, block_size: int = 32) -> float:
    """Run ``python -m onnxruntime_genai.models.builder``; returns its wall time in seconds.

    ``precision="fp32"`` builds the unquantized graph (the parity tests compare it with transformers).
    """
    extra = [f"block_size={block_size}", "is_symmetric=true"] if precision == "int4" else []
    if precision == "int4" and int8_head:
        extra += ["shared_embeddings=false", "op_types_to_quantize=MatMul/Gather", "matmul_mixed_precision=last_matmul:int8"]
    with tempfile.TemporaryDirectory(prefix="ortgenai-cache-") as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out_dir),
               "-p", precision, "-e", "cpu", "-c", cache] + (["--extra_options", *extra] if extra else [])
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        dt = time.perf_counter() - t
    if p.returncode or not (out_dir / "genai_config.json").is_file():
        raise RuntimeError(f"onnxruntime-genai builder failed on {hf_dir}:\n{(p.stderr or p.stdout)[-3000:]}")
    return dt
