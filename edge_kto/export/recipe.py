"""``run_export``: a training run (or any HF model folder) -> a hash-verified bundle.

    resolve source   run/model (merged in torch, fp32) or merge run/adapter into its fp base now
    GGUF             llama.cpp convert_hf_to_gguf (f16) -> llama_model_quantize per requested type
    ONNX             onnxruntime-genai builder, int4 block 32 symmetric (int8 LM head by default)
    golden.jsonl     fp greedy outputs, top-k log-probs and labelled completions on held-out prompts
    manifest.json    every file's size + sha256, tool versions, provenance, tokenizer, generation

Everything is built in a temporary folder next to the destination and renamed into place at the
end: a failure at any stage leaves no half bundle, and an existing bundle is only replaced with
``force``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_kto_runtime.bundle import FORMAT, SCHEMA_VERSION, file_entry, open_bundle, zip_bundle

from ..data import read_task
from ..jsonl import write_json_atomic, write_jsonl_atomic
from .golden import build_golden, read_golden_prompts
from .llamacpp import convert_hf_to_gguf, find_converter, gguf_stats, quantize_gguf
from .onnx import OnnxBuild, onnx_quant_label

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    source: str  # a training run folder, an HF model folder, or a model spec
    out: str
    gguf: list[str] = field(default_factory=lambda: ["Q4_K_M"])  # also F16 / F32 (the converter's own output)
    onnx: bool = True
    onnx_int8_head: bool = True
    golden_data: str | None = None  # task folder (eval split), prompt file or KTO rows; default: the run's data
    golden_limit: int = 32
    golden_max_new_tokens: int = 64
    golden_top_k: int = 16
    golden_verifier: str | None = None  # task accuracy in the check; default: the task folder's verifier
    check: bool = True  # run the alignment gate on the finished bundle (needs a golden set)
    thresholds: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = 256  # generation defaults written into the manifest
    n_ctx: int = 2048
    name: str | None = None
    force: bool = False
    zip: bool = False
    threads: int | None = None


@dataclass
class ExportResult:
    bundle: Path
    zip_path: Path | None
    manifest: dict[str, Any]
    timings: dict[str, Any]
    seconds: float
    alignment: Any = None  # CheckResult when the gate ran


def _resolve_source(cfg: ExportConfig, work: Path) -> tuple[Path, dict[str, Any], str | None]:
    """(fp HF folder, training provenance, default golden data) for a run folder or a model."""
    src = Path(cfg.source)
    if (src / "config.json").is_file() and (src / "adapter").is_dir():  # a training run
        tcfg = json.loads((src / "config.json").read_text())
        report = json.loads((src / "train_report.json").read_text()) if (src / "train_report.json").exists() else {}
        training = {"method": tcfg.get("loss_type", "kto"), "run": str(src.resolve()), "base_model": tcfg.get("model"),
                    "data": tcfg.get("data"), "beta": tcfg.get("beta"), "steps": tcfg.get("steps"),
                    "lora": tcfg.get("lora"), "final": report.get("final", {})}
        if (src / "model" / "config.json").is_file():
            return src / "model", training, tcfg.get("data")
        return _merge_adapter(tcfg["model"], src / "adapter", work / "merged"), training, tcfg.get("data")
    from ..models.loader import resolve_spec

    kind, loc = resolve_spec(cfg.source)
    if kind == "hf_dir":
        return Path(loc), {"method": "none", "base_model": cfg.source}, None
    if kind == "gguf":
        from ..models.loader import gguf_to_hf

        return gguf_to_hf(loc, work / "hf"), {"method": "none", "base_model": cfg.source}, None
    raise ValueError(f"{cfg.source}: export needs a local run folder or model (hub ids: download first)")


def hf_source_for_check(cfg: ExportConfig, bundle: Path) -> str:
    """The fp model the artifacts were made from: the run's merged model or the source folder."""
    src = Path(cfg.source)
    if (src / "model" / "config.json").is_file():
        return str(src / "model")
    if (src / "config.json").is_file() and not (src / "adapter").is_dir():
        return str(src)
    from ..models.loader import resolve_spec

    kind, loc = resolve_spec(cfg.source)
    if kind == "hf_dir":
        return str(loc)
    raise ValueError(f"{cfg.source}: no fp model folder to check against; run `edge-kto check {bundle} --reference ...`")


def _merge_adapter(base_spec: str, adapter: Path, out: Path) -> Path:
    """LoRA merged into the fp32 base in torch, never into a quantized base."""
    import torch
    from peft import PeftModel

    from ..models import load_model

    base, tok = load_model(base_spec, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _tokenizer_section(tok: Any, model_dir: Path) -> dict[str, Any]:
    gen = json.loads((model_dir / "generation_config.json").read_text()) if (model_dir / "generation_config.json").exists() else {}
    eos_ids = gen.get("eos_token_id", tok.eos_token_id)
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    eos = [tok.convert_ids_to_tokens(int(i)) for i in eos_ids if i is not None]
    return {"chat_template": tok.chat_template or "", "bos": tok.bos_token, "bos_id": tok.bos_token_id,
            "eos": eos, "eos_ids": [int(i) for i in eos_ids if i is not None], "stop": eos,
            "add_bos": bool(getattr(tok, "add_bos_token", False))}


def _tool_versions(conv: Any) -> dict[str, Any]:
    import importlib.metadata as md

    def v(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {"edge_kto": v("edge-kto"), "llama_cpp_python": v("llama-cpp-python"),
            "llama_cpp_commit": conv.llama_cpp_commit if conv else None, "gguf_py": conv.gguf_py_version if conv else None,
            "onnxruntime_genai": v("onnxruntime-genai"), "transformers": v("transformers"), "torch": v("torch")}


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"{out}: already exists; pass --force to replace it")


def run_export(cfg: ExportConfig, progress: bool = True) -> ExportResult:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    _check_destination(out, cfg.force)
    types = [q.upper() for q in cfg.gguf]
    if not types and not cfg.onnx:
        raise ValueError("nothing to export: give at least one --gguf type or keep ONNX")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        manifest, timings = _build(cfg, types, tmp, progress)
        open_bundle(tmp, verify=True)  # what we hand over must pass the device's own check
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        if out.exists():  # --force: swap, then delete the old one
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    alignment = None
    if cfg.check and "golden" in manifest:
        from ..check import CheckConfig, run_check

        t = time.perf_counter()
        try:
            reference = hf_source_for_check(cfg, out)
        except ValueError as e:
            log.warning("alignment check skipped: %s", e)
        else:
            alignment = run_check(CheckConfig(bundle=str(out), reference=reference, thresholds=cfg.thresholds,
                                              threads=cfg.threads, verify=False), progress=progress)
            manifest = json.loads((out / "manifest.json").read_text())
            timings["check_s"] = time.perf_counter() - t
    zpath = zip_bundle(out, out.with_suffix(".zip")) if cfg.zip else None
    timings["total_s"] = time.perf_counter() - t0
    return ExportResult(out, zpath, manifest, timings, timings["total_s"], alignment)


def _build_gguf(hf_dir: Path, types: list[str], tmp: Path, work: Path, threads: int | None, timings: dict[str, Any],
                artifacts: list[dict[str, Any]]) -> Any:
    """llama.cpp's converter writes f16 (f32 when only F32 is asked), then one quantize per type."""
    conv = find_converter()
    base_type = "F32" if types == ["F32"] else "F16"
    base = work / f"model-{base_type.lower()}.gguf"
    timings["convert_s"] = convert_hf_to_gguf(hf_dir, base, base_type.lower(), conv)
    for q in types:
        dest = tmp / f"model-{q.lower()}.gguf"
        if q == base_type:
            shutil.copyfile(base, dest)
        elif q in ("F16", "F32"):
            timings["convert_s"] += convert_hf_to_gguf(hf_dir, dest, q.lower(), conv)
        else:
            timings["quantize_s"][q] = quantize_gguf(base, dest, q, threads)
        st = gguf_stats(dest, q)
        artifacts.append({"path": dest.name, "backend": "llama.cpp", "quant": q, **file_entry(dest),
                          "bits_per_weight": st.bits_per_weight, "tensor_types": st.tensor_types,
                          "k_quant_fallbacks": st.fallbacks})
    return conv


def _build_golden(cfg: ExportConfig, hf_dir: Path, tok: Any, default_golden: str | None, tmp: Path,
                  timings: dict[str, Any], progress: bool) -> dict[str, Any] | None:
    src = cfg.golden_data or default_golden
    if not src:
        log.warning("no held-out data for the golden set (--golden-data); the alignment check will need one")
        return None
    import torch
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    rows = build_golden(model, tok, read_golden_prompts(src, limit=cfg.golden_limit), cfg.golden_max_new_tokens,
                        cfg.golden_top_k, progress)
    write_jsonl_atomic(tmp / "golden.jsonl", rows)
    timings["golden_s"] = time.perf_counter() - t
    verifier = cfg.golden_verifier or (read_task(src).verifier if Path(src).is_dir() else None)
    return {"path": "golden.jsonl", **file_entry(tmp / "golden.jsonl"), "rows": len(rows), "source": str(src),
            "top_k": cfg.golden_top_k, "max_new_tokens": cfg.golden_max_new_tokens, "verifier": verifier}


def _build(cfg: ExportConfig, types: list[str], tmp: Path, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    from transformers import AutoTokenizer

    work = tmp / ".work"
    work.mkdir()
    timings: dict[str, Any] = {"quantize_s": {}}
    hf_dir, training, default_golden = _resolve_source(cfg, work)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    artifacts: list[dict[str, Any]] = []

    # The ONNX builder runs in a child process while GGUF is converted and quantized here (both
    # mostly single-threaded); the golden set (multi-threaded torch) waits for the builder.
    onnx_build = OnnxBuild(hf_dir, tmp / "onnx-int4", "int4", cfg.onnx_int8_head) if cfg.onnx else None
    try:
        conv = _build_gguf(hf_dir, types, tmp, work, cfg.threads, timings, artifacts) if types else None
        if onnx_build is not None:
            timings["onnx_s"] = onnx_build.wait()
            onnx_dir = tmp / "onnx-int4"
            files = {p.relative_to(onnx_dir).as_posix(): file_entry(p) for p in sorted(onnx_dir.rglob("*")) if p.is_file()}
            artifacts.append({"path": "onnx-int4/", "backend": "onnxruntime-genai", "quant": onnx_quant_label(cfg.onnx_int8_head),
                              "files": files, "bytes": sum(e["bytes"] for e in files.values())})
    finally:
        if onnx_build is not None:
            onnx_build.close()
    golden = _build_golden(cfg, hf_dir, tok, default_golden, tmp, timings, progress)
    shutil.rmtree(work)
    manifest: dict[str, Any] = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "name": cfg.name or Path(cfg.out).name, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": training.get("base_model"), "training": training, "artifacts": artifacts,
        "tokenizer": _tokenizer_section(tok, hf_dir),
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": 0.0, "n_ctx": cfg.n_ctx},
        "tools": _tool_versions(conv), "export": {k: v for k, v in timings.items()},
        "export_config": asdict(cfg),
    }
    if golden:
        manifest["golden"] = golden
    write_json_atomic(tmp / "manifest.json", manifest)
    return manifest, timings
