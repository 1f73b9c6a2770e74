"""Export wall time vs the tools' own time, artifact sizes and bits per weight (SmolLM2-135M-Instruct).

In one run: (1) the tools by hand — llama.cpp's converter to f16, ``llama_model_quantize`` per
type, onnxruntime-genai's builder with the same options; (2) ``edge-kto export`` for the same
artifacts plus the golden set, hashing and the manifest. Ratio = (2) / (1); goal <= 1.2x.

    python benchmarks/export_time.py [--gguf Q4_K_M,Q4_0,Q8_0] [--golden 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edge_kto.export import ExportConfig, run_export
from edge_kto.export.llamacpp import convert_hf_to_gguf, find_converter, quantize_gguf
from edge_kto.export.onnx import build_onnx
from edge_kto.models import fetch_model

TASK = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "brightnest_support"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default="Q4_K_M,Q4_0,Q8_0")
    ap.add_argument("--golden", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/export_time.json")
    a = ap.parse_args()
    types = a.gguf.split(",")
    hf = fetch_model("smollm2-135m-instruct").hf_dir
    conv = find_converter()
    work = Path(tempfile.mkdtemp(prefix="edge-kto-export-bench-"))

    tools: dict[str, float] = {"convert_f16": convert_hf_to_gguf(hf, work / "f16.gguf", "f16", conv)}
    for q in types:
        tools[f"quantize_{q}"] = quantize_gguf(work / "f16.gguf", work / f"{q}.gguf", q)
    tools["onnx_builder"] = build_onnx(hf, work / "onnx", "int4", int8_head=True)
    tools_total = sum(tools.values())

    t = time.perf_counter()  # the same artifacts, nothing else: the like-for-like comparison
    run_export(ExportConfig(source=str(hf), out=str(work / "artifacts-only"), gguf=types), progress=False)
    artifacts_only = time.perf_counter() - t
    t = time.perf_counter()  # what `edge-kto export` does by default: + the golden set for the alignment check
    res = run_export(
        ExportConfig(
            source=str(hf), out=str(work / "bundle"), gguf=types, golden_data=str(TASK), golden_limit=a.golden
        ),
        progress=False,
    )
    ours = time.perf_counter() - t
    golden_s = res.timings.get("golden_s", 0.0)

    arts = [
        {
            "artifact": x["path"],
            "quant": x["quant"],
            "mb": x["bytes"] / 1e6,
            "bits_per_weight": x.get("bits_per_weight"),
            "k_quant_fallbacks": x.get("k_quant_fallbacks"),
            "tensor_types": x.get("tensor_types"),
        }
        for x in res.manifest["artifacts"]
    ]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "model": "SmolLM2-135M-Instruct",
        "tools_s": tools,
        "tools_total_s": tools_total,
        "export_s": ours,
        "export_timings": res.timings,
        "ratio": ours / tools_total,
        "artifacts_only_s": artifacts_only,
        "ratio_artifacts_only": artifacts_only / tools_total,
        "golden_rows": a.golden,
        "artifacts": arts,
    }
    print("| step | tools by hand (s) | edge-kto export (s) |\n|---|---|---|")
    print(f"| convert f16 | {tools['convert_f16']:.1f} | {res.timings['convert_s']:.1f} |")
    for q in types:
        print(f"| quantize {q} | {tools[f'quantize_{q}']:.1f} | {res.timings['quantize_s'][q]:.1f} |")
    print(f"| ONNX int4 builder | {tools['onnx_builder']:.1f} | {res.timings['onnx_s']:.1f} |")
    print(f"| golden set ({a.golden} prompts) | - | {golden_s:.1f} |")
    print(
        f"| **total** | **{tools_total:.1f}** | **{ours:.1f}** (same artifacts without the golden set: "
        f"{artifacts_only:.1f}) |"
    )
    print(
        f"\nratio export / tools: {summary['ratio_artifacts_only']:.2f}x for the same artifacts; "
        f"{summary['ratio']:.2f}x with the golden set\n"
    )
    print("| artifact | quant | MB | bits/weight | K-quant fallbacks |\n|---|---|---|---|---|")
    for x in arts:
        print(
            f"| {x['artifact']} | {x['quant']} | {x['mb']:.1f} | {x['bits_per_weight'] or '-'} | "
            f"{x['k_quant_fallbacks'] if x['k_quant_fallbacks'] is not None else '-'} |"
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
