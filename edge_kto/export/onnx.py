"""ONNX int4 with onnxruntime-genai's own model builder (MatMulNBits, block 32, symmetric, CPU).

``int8_head`` keeps the last MatMul (the LM head) at int8 via the builder's
``matmul_mixed_precision=last_matmul:int8``; on sub-1B models the int4 head costs most of the
quality (see benchmarks/RESULTS.md). With tied embeddings, onnxruntime-genai 0.18's builder
writes an invalid graph for that combination when the table is shared
("lm_head.MatMul.weight_Q8G32 is not a graph input"), so the embedding is untied and quantized
on its own (int4 ``GatherBlockQuantized``) — a few MB more than sharing one int4 table.
Either way the input embedding is int4 (the builder's ``GatherBlockQuantized`` has no 8-bit form),
although finishing leaves the embedding off the grid. ``fp32_embeddings`` keeps the token embedding
and the LM head out of quantization (``nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather``;
a tied table is stored once, fp32, for both): they then compute what the fp weights do, at 4 bytes
per weight (SmolLM2-135M's 576 x 49152 table is 113 MB) -- the candidate to fall through to when
the int4 embedding and int8 head lose answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_kto_runtime.errors import ToolError


class OnnxBuild:
    """The builder running in a child process, so export can convert and quantize GGUF (and build
    the golden set) meanwhile; ``wait`` returns its wall time or raises with its log."""

    def __init__(
        self,
        hf_dir: Path,
        out_dir: Path,
        precision: str = "int4",
        int8_head: bool = True,
        block_size: int = 32,
        accuracy_level: int | None = None,
        algo_config: str = "default",
        int8_layers: bool = False,
        head_accuracy_level: int | None = None,
        fp32_embeddings: bool = False,
    ):
        int8_head = int8_head and not fp32_embeddings
        extra = [f"block_size={block_size}", "is_symmetric=true"] if precision == "int4" else []
        if precision == "int4" and accuracy_level is not None:
            extra.append(f"accuracy_level={accuracy_level}")
        if precision == "int4" and algo_config != "default":
            extra.append(f"algo_config={algo_config}")
        mixed = (["last_matmul:int8"] if int8_head else []) + (["mixed_layers:int8"] if int8_layers else [])
        if precision == "int4" and int8_head:
            extra += ["shared_embeddings=false", "op_types_to_quantize=MatMul/Gather"]
        if precision == "int4" and fp32_embeddings:  # one fp32 table for the input Gather and the head, when tied
            extra += ["shared_embeddings=true", "nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather"]
        if precision == "int4" and mixed:
            extra.append("matmul_mixed_precision=" + ",".join(mixed))
        self.hf_dir, self.out_dir, self.head_accuracy_level = hf_dir, out_dir, head_accuracy_level
        self._tmp = tempfile.TemporaryDirectory(prefix="ortgenai-")
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(hf_dir),
            "-o",
            str(out_dir),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            self._tmp.name,
        ] + (["--extra_options", *extra] if extra else [])
        self._log = open(Path(self._tmp.name) / "builder.log", "w+")
        self._t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )

    def wait(self) -> float:
        try:
            rc = self.proc.wait()
            dt = time.perf_counter() - self._t0
            if rc or not (self.out_dir / "genai_config.json").is_file():
                self._log.seek(0)
                raise ToolError(f"onnxruntime-genai builder failed on {self.hf_dir}:\n{self._log.read()[-3000:]}")
            if self.head_accuracy_level is not None:
                set_head_accuracy_level(self.out_dir / "model.onnx", self.head_accuracy_level)
            return dt
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        self._tmp.cleanup()


def set_head_accuracy_level(model: Path, level: int) -> None:
    """Set the LM head MatMulNBits node's ``accuracy_level`` (the builder has one level for all nodes).

    Only the graph file is rewritten; the weights stay in the external data file untouched.
    """
    import onnx

    from edge_kto_runtime.atomic import write_atomic

    m = onnx.load(str(model), load_external_data=False)
    heads = [n for n in m.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/")]
    if len(heads) != 1:
        raise ToolError(f"{model}: expected one LM head MatMulNBits node, found {[n.name for n in heads]}")
    for a in heads[0].attribute:
        if a.name == "accuracy_level":
            a.i = level
            break
    else:
        heads[0].attribute.append(onnx.helper.make_attribute("accuracy_level", level))
    write_atomic(model, m.SerializeToString())


def build_onnx(
    hf_dir: Path, out_dir: Path, precision: str = "int4", int8_head: bool = True, block_size: int = 32
) -> float:
    """Run ``python -m onnxruntime_genai.models.builder``; returns its wall time in seconds.

    ``precision="fp32"`` builds the unquantized graph (the parity tests compare it with transformers).
    """
    return OnnxBuild(hf_dir, out_dir, precision, int8_head, block_size).wait()
