"""``run_export``: a training run (or any HF model folder) -> a hash-verified bundle.

    resolve source   run/model (merged in torch, fp32), run/adapter merged now, or a finish folder
                     (weights already on the 4-bit grid; the fp student it came from is the reference)
    calibrate        optional importance matrix from the training rows (quant/imatrix.py)
    GGUF             llama.cpp convert_hf_to_gguf (f32) -> llama_model_quantize per candidate
    ONNX             onnxruntime-genai builder per candidate (int4 block 32, int8 LM head by default)
    golden.jsonl     fp greedy outputs, top-k log-probs and labelled completions on held-out prompts
    gate + select    the alignment check on every candidate, in the temporary folder; with
                     ``select: smallest-passing`` only the smallest passing artifact per format stays
    manifest.json    every file's size + sha256, tool versions, provenance, recipes, every candidate's numbers

Everything is built and checked in a temporary folder next to the destination and renamed into
place at the end: a failure at any stage leaves no half bundle, and an existing bundle is only
replaced with ``force`` -- and never by a bundle that failed the gate (that one is left next to
it as ``NAME.failed``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_kto_runtime.atomic import fsync_dir, sweep_stale, temp_prefix
from edge_kto_runtime.bundle import FORMAT, SCHEMA_VERSION, file_entry, open_bundle
from edge_kto_runtime.bundle_zip import zip_bundle
from edge_kto_runtime.defaults import DEVICE_MAX_NEW_TOKENS, GOLDEN_MAX_NEW_TOKENS, N_CTX
from edge_kto_runtime.errors import InputExists, InvalidInput
from edge_kto_runtime.verifiers import get_verifier

from ..data import read_task
from ..jsonl import write_json_atomic, write_jsonl_atomic
from ..quant.fake import mixed_8bit_gguf_pattern
from ..run_folder import FINISH, RunFolder
from ..schema import KEY_OMITS_DEFAULT
from .calibrate import importance_matrix
from .candidates import SELECT_MODES, CandidateError, GgufCandidate, OnnxCandidate, describe, parse_gguf, parse_onnx
from .golden import build_golden, read_golden_prompts, training_prompts, with_hard_pairs
from .llamacpp import convert_hf_to_gguf, find_converter, gguf_stats, gguf_tensor_shapes, quantize_gguf
from .onnx import OnnxBuild
from .select import select_artifacts

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    source: str  # a training run folder, an HF model folder, or a model spec
    out: str
    # Candidates (export/candidates.py): GGUF type names or mappings; ONNX true/false, a mapping or a list.
    gguf: list[Any] = field(default_factory=lambda: ["Q4_K_M"])  # also F16 / F32 (the converter's own output)
    onnx: Any = True
    onnx_int8_head: bool = True  # default for ONNX candidates that do not say
    select: str = "all"  # or "smallest-passing": per format, keep the smallest artifact that passes the gate
    imatrix: str | None = None  # "auto": computed from calibration_data; or a GGUF imatrix file (llama-imatrix's too)
    calibration_data: str | None = None  # KTO rows / prompts of the *training* split; default: the run's data
    calibration_limit: int = 256  # rows
    golden_data: str | None = None  # task folder (eval split), prompt file or KTO rows; default: the run's data
    golden_limit: int = 32
    # of those, the rows that also get fp log-probs and scored completions (KL, top-1, preference pairs),
    # spread evenly; the rest carry the greedy answer only (task accuracy). None: every row.
    golden_detail_limit: int | None = None
    # Training prompts with a reference (from the run's rows) added to the golden set: the gate measures
    # agreement with the trained model, not generalisation, so more prompts are more evidence for its
    # paired verdict; they are marked ``split: train`` and accuracy claims stay on the eval split.
    golden_train_limit: int = field(default=0, metadata=KEY_OMITS_DEFAULT)
    golden_max_new_tokens: int = GOLDEN_MAX_NEW_TOKENS
    golden_top_k: int = 16
    golden_verifier: str | None = None  # task accuracy in the check; default: the task folder's verifier
    check: bool = True  # run the alignment gate on the finished bundle (needs a golden set)
    thresholds: dict[str, float] = field(default_factory=dict)
    max_new_tokens: int = DEVICE_MAX_NEW_TOKENS  # generation defaults written into the manifest
    n_ctx: int = N_CTX
    name: str | None = None
    force: bool = False
    zip: bool = False
    threads: int | None = None

    def candidates(self) -> tuple[list[GgufCandidate], list[OnnxCandidate]]:
        """Parsed and validated candidates (bad names and options fail here, before any work)."""
        if self.select not in SELECT_MODES:
            raise CandidateError(f"select: one of {SELECT_MODES}, got {self.select!r}")
        gg = [parse_gguf(c) for c in self.gguf]
        ox = parse_onnx(self.onnx, self.onnx_int8_head)
        paths = [c.path for c in gg] + [c.path for c in ox]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise CandidateError(f"two candidates would write the same artifact {dup}; give one a `name`")
        if not paths:
            raise CandidateError("nothing to export: give at least one GGUF type or an ONNX candidate")
        if any(c.imatrix for c in gg) and not self.imatrix:
            self.imatrix = "auto"
        return gg, ox


@dataclass
class Source:
    """What export starts from: the fp folder the artifacts are made from and the fp reference."""

    hf_dir: Path
    reference_dir: Path  # the fp student the golden set and the gate compare against
    training: dict[str, Any]
    default_data: str | None  # the run's training rows (golden fallback, calibration default)
    finished: str | None = None  # the grid a finish folder's weights lie on (e.g. q4_0)
    mixed_layers: list[int] | None = None  # finished with the sensitive projections of these layers at 8-bit


@dataclass
class ExportResult:
    bundle: Path
    zip_path: Path | None
    manifest: dict[str, Any]
    timings: dict[str, Any]
    seconds: float
    alignment: Any = None  # CheckResult when the gate ran


def _run_training(path: Path) -> dict[str, Any]:
    run = RunFolder(path)
    tcfg, report = run.config(), run.report()
    return {
        "method": tcfg.get("loss_type", "kto"),
        "run": str(path.resolve()),
        "base_model": tcfg.get("model"),
        "data": tcfg.get("data"),
        "beta": tcfg.get("beta"),
        "steps": tcfg.get("steps"),
        "lora": tcfg.get("lora"),
        "final": report.get("final", {}),
    }


def _resolve_source(cfg: ExportConfig, work: Path) -> Source:
    """Where the artifacts come from, and which fp model they are checked against."""
    src = Path(cfg.source)
    folder = RunFolder.open(src)
    if folder.kind == FINISH and folder.has_model():  # a finished student
        rep, fcfg = folder.report(), folder.config()
        ref = Path(rep["source_model"])
        run = ref.parent
        training = _run_training(run) if RunFolder(run).adapter.is_dir() else {"method": "none", "base_model": str(ref)}
        training["finish"] = {
            "dir": str(src.resolve()),
            "format": rep["format"],
            "steps": rep["steps"],
            "final": rep.get("final", {}),
            "data": fcfg.get("data"),
        }
        mixed = (rep.get("mixed_8bit") or {}).get("layers")
        training["finish"]["mixed_8bit_layers"] = mixed
        return Source(folder.model, ref, training, fcfg.get("data") or training.get("data"), rep["format"], mixed)
    if folder.is_training_run():
        training = _run_training(src)
        tcfg = folder.config()
        hf = folder.model if folder.has_model() else merge_adapter(tcfg["model"], folder.adapter, work / "merged")
        return Source(hf, hf, training, tcfg.get("data"))
    from ..models.loader import resolve_spec

    kind, loc = resolve_spec(cfg.source)
    if kind == "hf_dir":
        return Source(Path(loc), Path(loc), {"method": "none", "base_model": cfg.source}, None)
    if kind == "gguf":
        from ..models.loader import gguf_to_hf

        hf = gguf_to_hf(loc, work / "hf")
        return Source(hf, hf, {"method": "none", "base_model": cfg.source}, None)
    raise InvalidInput(f"{cfg.source}: export needs a local run folder or model (hub ids: download first)")


def merge_adapter(base_spec: str, adapter: Path, out: Path) -> Path:
    """LoRA merged into the fp32 base in torch, never into a quantized base."""
    import torch
    from peft import PeftModel

    from ..models import load_model

    base, tok = load_model(base_spec, dtype=torch.float32)
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _tokenizer_section(tok: Any, model_dir: Path) -> dict[str, Any]:
    gen = (
        json.loads((model_dir / "generation_config.json").read_text())
        if (model_dir / "generation_config.json").exists()
        else {}
    )
    eos_ids = gen.get("eos_token_id", tok.eos_token_id)
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    eos = [tok.convert_ids_to_tokens(int(i)) for i in eos_ids if i is not None]
    return {
        "chat_template": tok.chat_template or "",
        "bos": tok.bos_token,
        "bos_id": tok.bos_token_id,
        "eos": eos,
        "eos_ids": [int(i) for i in eos_ids if i is not None],
        "stop": eos,
        "eos_id": tok.eos_token_id,
        "add_bos": bool(getattr(tok, "add_bos_token", False)),
    }


def _tool_versions(conv: Any) -> dict[str, Any]:
    import importlib.metadata as md

    def v(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    return {
        "edge_kto": v("edge-kto"),
        "llama_cpp_python": v("llama-cpp-python"),
        "llama_cpp_commit": conv.llama_cpp_commit if conv else None,
        "gguf_py": conv.gguf_py_version if conv else None,
        "onnxruntime_genai": v("onnxruntime-genai"),
        "transformers": v("transformers"),
        "torch": v("torch"),
    }


def _check_destination(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise InputExists(f"{out}: already exists; pass --force to replace it")


def run_export(cfg: ExportConfig, progress: bool = True) -> ExportResult:
    t0 = time.perf_counter()
    out = Path(cfg.out)
    _check_destination(out, cfg.force)
    gguf_cands, onnx_cands = cfg.candidates()
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent, out.name)  # the build folders of an export that was killed
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name, "building"), dir=out.parent))
    try:
        manifest, timings, source = _build(cfg, gguf_cands, onnx_cands, tmp, out, progress)
        open_bundle(tmp, verify=True)  # what we hand over must pass the device's own check
        alignment = _gate(cfg, tmp, source, timings, progress) if cfg.check and "golden" in manifest else None
        if alignment is not None:
            manifest = select_artifacts(tmp, cfg.select, alignment)
            open_bundle(tmp, verify=True)
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700
        failed = alignment is not None and not alignment.passed
        dest = _install(tmp, out, keep_old=failed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if alignment is not None:
        alignment.report_path = dest / "alignment.md"
    zpath = zip_bundle(dest, dest.with_name(dest.name + ".zip")) if cfg.zip and dest == out else None
    timings["total_s"] = time.perf_counter() - t0
    return ExportResult(dest, zpath, manifest, timings, timings["total_s"], alignment)


def _gate(cfg: ExportConfig, tmp: Path, source: Source, timings: dict[str, Any], progress: bool) -> Any:
    """The alignment check on every candidate, run in the temporary folder (before anything is replaced)."""
    from ..check import CheckConfig, run_check

    t = time.perf_counter()
    res = run_check(
        CheckConfig(
            bundle=str(tmp),
            reference=str(source.reference_dir),
            exported=str(source.hf_dir),
            thresholds=cfg.thresholds,
            threads=cfg.threads,
            verify=False,
        ),
        progress=progress,
    )
    timings["check_s"] = time.perf_counter() - t
    return res


def _install(tmp: Path, out: Path, keep_old: bool) -> Path:
    """Rename the finished bundle into place. A bundle that failed the gate never replaces an
    existing one: it is left beside it as ``NAME.failed`` and the old bundle stays."""
    if out.exists() and keep_old:
        failed = out.with_name(out.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(tmp, failed)
        log.warning(
            "%s failed the alignment gate; the existing bundle %s was kept, the failed one is at %s",
            failed.name,
            out,
            failed,
        )
        return failed
    if out.exists():  # --force: swap, then delete the old one
        old = out.with_name(temp_prefix(out.name, "old") + "0")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _build_gguf(
    hf_dir: Path,
    cands: list[GgufCandidate],
    tmp: Path,
    work: Path,
    cfg: ExportConfig,
    source: Source,
    imatrix: Any,
    timings: dict[str, Any],
    artifacts: list[dict[str, Any]],
) -> Any:
    """llama.cpp's converter writes f32 once (quantizing from f16 would round twice, and a finished
    model's grid values need up to 14 mantissa bits), then one ``llama_model_quantize`` per candidate."""
    conv = find_converter()
    base = work / "model-f32.gguf"
    timings["convert_s"] = convert_hf_to_gguf(hf_dir, base, "f32", conv)
    means = None
    if imatrix is not None and any(c.imatrix for c in cands):
        imatrix.check_shapes(gguf_tensor_shapes(base), where=str(cfg.imatrix))
        means = imatrix.means()
    for c in cands:
        dest = tmp / c.path
        if c.type == "F32":
            shutil.copyfile(base, dest)
        elif c.type == "F16":
            timings["convert_s"] += convert_hf_to_gguf(hf_dir, dest, "f16", conv)
        else:
            on_own_grid = source.finished == "q4_0" and c.type == "Q4_0"
            pure = c.pure if c.pure is not None else on_own_grid
            emb = c.token_embedding_type or ("Q8_0" if on_own_grid else None)
            if on_own_grid and c.imatrix:
                log.warning(
                    "%s: an importance matrix makes Q4_0 search its scales, so the finished grid is no longer "
                    "reproduced exactly",
                    c.path,
                )
            timings["quantize_s"][c.path] = quantize_gguf(
                base,
                dest,
                c.type,
                cfg.threads,
                imatrix=means if c.imatrix else None,
                tensor_types=c.tensor_types,
                token_embedding_type=emb,
                output_type=c.output_type,
                pure=pure,
            )
        st = gguf_stats(dest, c.type)
        artifacts.append(
            {
                "path": dest.name,
                "backend": "llama.cpp",
                "quant": _gguf_label(c),
                **file_entry(dest),
                "bits_per_weight": st.bits_per_weight,
                "tensor_types": st.tensor_types,
                "k_quant_fallbacks": st.fallbacks,
                "recipe": describe(c),
            }
        )
    return conv


def _gguf_label(c: GgufCandidate) -> str:
    return (
        c.type
        + ("+imatrix" if c.imatrix else "")
        + ("+mix" if c.tensor_types or c.token_embedding_type or c.output_type else "")
    )


def _build_golden(
    cfg: ExportConfig, source: Source, tok: Any, tmp: Path, timings: dict[str, Any], progress: bool
) -> dict[str, Any] | None:
    """The golden set always comes from the fp reference (for a finished model: the student before finishing);
    a finished model's own top-k is added as the gate's KL reference (see :mod:`.golden`)."""
    src = cfg.golden_data or source.default_data
    if not src:
        log.warning("no held-out data for the golden set (--golden-data); the alignment check will need one")
        return None
    import torch
    from transformers import AutoModelForCausalLM

    t = time.perf_counter()
    verifier = cfg.golden_verifier or (read_task(src).verifier if Path(src).is_dir() else None)
    prompts = read_golden_prompts(src, limit=cfg.golden_limit)
    if cfg.golden_train_limit:
        prompts += training_prompts(source.default_data, prompts, cfg.golden_train_limit)
    if verifier:
        prompts = with_hard_pairs(prompts, get_verifier(verifier))
    model = AutoModelForCausalLM.from_pretrained(str(source.reference_dir), dtype=torch.float32)
    exported = None
    if source.hf_dir.resolve() != source.reference_dir.resolve():
        exported = AutoModelForCausalLM.from_pretrained(str(source.hf_dir), dtype=torch.float32)
    rows = build_golden(
        model,
        tok,
        prompts,
        cfg.golden_max_new_tokens,
        cfg.golden_top_k,
        progress,
        exported=exported,
        detail_limit=cfg.golden_detail_limit,
    )
    write_jsonl_atomic(tmp / "golden.jsonl", rows)
    timings["golden_s"] = time.perf_counter() - t
    return {
        "path": "golden.jsonl",
        **file_entry(tmp / "golden.jsonl"),
        "rows": len(rows),
        "detail_rows": sum(1 for r in rows if "top_logprobs" in r),
        "train_rows": sum(1 for r in rows if r.get("split") == "train"),
        "source": str(src),
        "top_k": cfg.golden_top_k,
        "max_new_tokens": cfg.golden_max_new_tokens,
        "verifier": verifier,
        "kl_reference": "finished" if exported is not None else "student",
        "hard_pairs": sum(1 for r in rows for c in r.get("completions", []) if c.get("hard")),
    }


def _onnx_entry(c: OnnxCandidate, tmp: Path, seconds: float, timings: dict[str, Any]) -> dict[str, Any]:
    d = tmp / c.path.rstrip("/")
    timings["onnx_s"][c.path] = seconds
    files = {p.relative_to(d).as_posix(): file_entry(p) for p in sorted(d.rglob("*")) if p.is_file()}
    return {
        "path": c.path,
        "backend": "onnxruntime-genai",
        "quant": c.quant,
        "files": files,
        "bytes": sum(e["bytes"] for e in files.values()),
        "recipe": describe(c),
    }


def _build(
    cfg: ExportConfig,
    gguf_cands: list[GgufCandidate],
    onnx_cands: list[OnnxCandidate],
    tmp: Path,
    out: Path,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Any], Source]:
    from transformers import AutoTokenizer

    work = tmp / ".work"
    work.mkdir()
    timings: dict[str, Any] = {"quantize_s": {}, "onnx_s": {}}
    source = _resolve_source(cfg, work)
    if source.mixed_layers:  # finished mixed: its 8-bit projections must ship at 8-bit in every 4-bit artifact
        gguf_cands[:] = [_mixed_gguf(c, source.mixed_layers) for c in gguf_cands]
        onnx_cands[:] = [replace(c, int8_layers=True) for c in onnx_cands]
    hf_dir = source.hf_dir
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    artifacts: list[dict[str, Any]] = []
    imatrix_rec, imatrix = None, None
    if cfg.imatrix:
        t = time.perf_counter()
        imatrix_rec, imatrix = importance_matrix(cfg, source, tok, out, progress)
        timings["imatrix_s"] = time.perf_counter() - t

    # Each ONNX builder runs in a child process while GGUF is converted and quantized here (both
    # mostly single-threaded); the golden set (multi-threaded torch) waits for the builders.
    conv = None
    pending = list(onnx_cands)
    build = OnnxBuild(hf_dir, tmp / pending[0].path.rstrip("/"), **_onnx_args(pending[0])) if pending else None
    try:
        if gguf_cands:
            conv = _build_gguf(hf_dir, gguf_cands, tmp, work, cfg, source, imatrix, timings, artifacts)
        while build is not None:
            c = pending.pop(0)
            artifacts.append(_onnx_entry(c, tmp, build.wait(), timings))
            build = OnnxBuild(hf_dir, tmp / pending[0].path.rstrip("/"), **_onnx_args(pending[0])) if pending else None
    finally:
        if build is not None:
            build.close()
    golden = _build_golden(cfg, source, tok, tmp, timings, progress)
    shutil.rmtree(work)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "name": cfg.name or Path(cfg.out).name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": source.training.get("base_model"),
        "training": source.training,
        "artifacts": artifacts,
        "tokenizer": _tokenizer_section(tok, hf_dir),
        "generation": {"max_new_tokens": cfg.max_new_tokens, "temperature": 0.0, "n_ctx": cfg.n_ctx},
        "tools": _tool_versions(conv),
        "export": {k: v for k, v in timings.items()},
        "export_config": asdict(cfg),
    }
    if imatrix_rec:
        manifest["imatrix"] = imatrix_rec
    if golden:
        manifest["golden"] = golden
    write_json_atomic(tmp / "manifest.json", manifest)
    return manifest, timings, source


def _mixed_gguf(c: GgufCandidate, layers: list[int]) -> GgufCandidate:
    """Q4_0 of a model finished mixed: the same layers' q/k/v/down as Q8_0 (what onnxruntime-genai's
    ``mixed_layers:int8`` upgrades), unless the candidate names its own tensor types."""
    if c.type != "Q4_0" or c.tensor_types:
        return c
    # Not ``pure``: a pure quantization ignores per-tensor choices, and without an imatrix non-pure Q4_0
    # leaves every other Linear Q4_0 (test_quant's mixed test reads the GGUF back: exact, max |diff| 0).
    return replace(c, tensor_types={mixed_8bit_gguf_pattern(layers): "Q8_0"}, pure=False if c.pure is None else c.pure)


def _onnx_args(c: OnnxCandidate) -> dict[str, Any]:
    return {
        "precision": c.precision,
        "int8_head": c.int8_head,
        "block_size": c.block_size,
        "accuracy_level": c.accuracy_level,
        "algo_config": c.algo_config,
        "int8_layers": c.int8_layers,
        "head_accuracy_level": c.head_level,
        "fp32_embeddings": c.fp32_embeddings,
    }
