"""``run_train``: KTO distillation of the student, read top to bottom.

    setup_training   data -> checks -> model (+ SFT warm start) -> LoRA -> batch plan -> reference table
    train_loop       for each optimizer step: micro-batches -> z0 -> KTO loss -> backward -> clip -> step
    finish_training  adapter, merged model + tokenizer, effective config, report, curves

Runs unchanged as one process or under ``accelerate launch`` / ``torchrun`` (DDP): the batch plan
is global and identical on every process, each process takes its slice of every micro-batch,
z0 is averaged over all processes, and metrics are summed over processes before logging.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge_kto_runtime.errors import InputExists, InvalidInput

from ..data import read_kto
from ..jsonl import AppendLog, write_json_atomic, write_jsonl_atomic
from ..models import load_model, load_tokenizer
from ..precision import autocast, resolve_precision, use_training_attention
from ..resume import check_same_job, job_record
from ..run_folder import RunFolder
from .batches import Batch, collate, pad_pairs, plan_batches, total_micro_steps
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .examples import prepare_examples
from .logps import CompletionLogps
from .loss import kto_loss, mismatched_log_ratio
from .metrics import StepAccumulator, plot_curves
from .reference import (
    ReferenceTable,
    cache_key,
    cached_reference,
    compute_reference,
    default_cache_dir,
    needed_sequences,
    weights_fingerprint,
)
from .sft import attach_lora, sft_warm_start

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    cfg: TrainConfig
    accelerator: Any
    run_dir: Path
    tokenizer: Any
    model: Any  # the PeftModel (unwrapped)
    module: Any  # CompletionLogps(model), wrapped by accelerate (DDP under several processes)
    optimizer: Any
    scheduler: Any
    examples: list
    plan: list[list[int]]
    steps: int
    pad_id: int
    reference: ReferenceTable | None
    report: dict[str, Any]
    start_step: int = 0
    history: list[dict] = field(default_factory=list)
    skipped_steps: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    adapter_dir: Path
    model_dir: Path | None
    metrics_path: Path
    plot_path: Path | None
    final_metrics: dict[str, Any]
    report: dict[str, Any]
    seconds: float
    resumed_from: int | None = None
    main_process: bool = True  # False on the other ranks of a multi-process run


def run_train(cfg: TrainConfig, resume: bool = False, force: bool = False, progress: bool = True) -> TrainResult:
    t0 = time.time()
    state = setup_training(cfg, resume=resume, force=force, progress=progress)
    train_loop(state, progress=progress)
    return finish_training(state, seconds=time.time() - t0)


# ---------------------------------------------------------------- setup


def _mixed_precision(cfg: TrainConfig) -> str:
    """accelerate's name for :func:`edge_kto.precision.resolve_precision` (``no`` = fp32)."""
    return "bf16" if resolve_precision(cfg.precision) == "bf16" else "no"


RESUME_MAY_CHANGE = ("out", "plot", "keep_checkpoints", "save_steps", "cache_dir", "merge")  # bookkeeping, not results


def _prepare_run_dir(run: Path, resume: bool, force: bool, acc: Any) -> None:
    if acc.is_main_process:
        if run.exists() and force and not resume:
            shutil.rmtree(run)
        folder = RunFolder(run)
        done, ckpts = folder.finished(), latest_checkpoint(folder.checkpoints)
        if not resume and (done or ckpts or folder.metrics.exists()):
            raise InputExists(
                f"{run}: already holds a training run; pass --resume to continue it or --force to start over"
            )
        if resume and done:
            raise InputExists(f"{run}: this run already finished (train_report.json); nothing to resume")
        run.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()


def setup_training(cfg: TrainConfig, resume: bool = False, force: bool = False, progress: bool = True) -> TrainState:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    cfg.validate()
    # cpu=True is what lets accelerate see a torchrun/accelerate-launch world on a machine without GPUs (gloo).
    # Autocast is ours (edge_kto.precision), not accelerate's: accelerate fixes mixed_precision once per
    # process, and a second run_train in the same process with another precision would be refused.
    acc = Accelerator(mixed_precision="no", cpu=not torch.cuda.is_available())
    if cfg.batch_size % acc.num_processes:
        raise InvalidInput(
            f"batch_size {cfg.batch_size} must be divisible by the number of processes ({acc.num_processes})"
        )
    run = Path(cfg.out)

    # 1. Rows -> token ids. Every bad-input check happens here, before the model is loaded.
    rows = read_kto(cfg.data, seed=cfg.seed)
    tok = load_tokenizer(cfg.model)
    examples, report = prepare_examples(rows, tok, cfg, source=cfg.data)
    _prepare_run_dir(run, resume, force, acc)
    if acc.is_main_process:  # a resumed run must be the same job: same data and settings (changes named)
        job = job_record(cfg.to_dict(), {"data": cfg.data})
        if resume:
            check_same_job(run / "job.json", job, ignore=RESUME_MAY_CHANGE)
        write_json_atomic(run / "job.json", job)
    set_seed(cfg.seed)

    # 2. The student: base (+ merged SFT warm start), then a fresh LoRA adapter for KTO.
    base, _ = load_model(cfg.model, dtype=torch.float32)
    base = use_training_attention(base.to(acc.device))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if cfg.sft_steps or cfg.sft_from:
        base = sft_warm_start(base.to(acc.device), examples, cfg, acc, run, pad_id, progress)
    if cfg.gradient_checkpointing:
        base.activation_checkpointing_enable({"use_reentrant": False})
    fingerprint = weights_fingerprint(base) if cfg.precompute_ref else ""
    model = attach_lora(base, cfg).to(acc.device)

    # 3. The global batch plan (identical on every process) and the reference log-probs.
    micro_steps = total_micro_steps(len(examples), cfg.batch_size, cfg.epochs, cfg.max_steps, cfg.grad_accum)
    plan = plan_batches(examples, cfg.batch_size, micro_steps, cfg.seed, cfg.group_by_length)
    steps = micro_steps // cfg.grad_accum
    module = CompletionLogps(model)
    reference = None
    if cfg.precompute_ref:
        seqs = needed_sequences(plan, examples, with_kl=cfg.loss_type == "kto")

        def score(batch: list[tuple[int, int]]) -> torch.Tensor:
            ids, att, comp = (
                t.to(acc.device)
                for t in pad_pairs(
                    [(examples[p].prompt_ids, examples[c].completion_ids) for p, c in batch], pad_id, cfg.max_length
                )
            )
            with torch.no_grad(), model.disable_adapter(), autocast(cfg.precision, acc.device.type):
                return module(ids, att, comp)

        key = cache_key(fingerprint, examples, seqs, _mixed_precision(cfg))
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        reference, hit = cached_reference(
            key,
            cache,
            lambda: compute_reference(
                score, seqs, examples, acc, max_tokens=cfg.batch_size * cfg.max_length // 2, progress=progress
            ),
            acc,
        )
        report["reference"] = {"sequences": len(seqs), "cached": hit, "cache_file": str(cache / f"{key}.pt")}

    # 4. Optimizer, schedule, accelerate, and (with --resume) the last checkpoint.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * steps), num_training_steps=steps
    )
    module, optimizer = acc.prepare(module, optimizer)  # the scheduler stays ours: one step per optimizer step
    state = TrainState(
        cfg, acc, run, tok, model, module, optimizer, scheduler, examples, plan, steps, pad_id, reference, report
    )
    if resume:
        ckpt = latest_checkpoint(RunFolder(run).checkpoints)
        if ckpt is not None:
            load_checkpoint(ckpt, model, optimizer, scheduler, acc)
            state.start_step = ckpt.step
            state.report["resumed_from"] = ckpt.step
    if acc.is_main_process:
        write_json_atomic(
            RunFolder(run).config_path,
            {
                **cfg.to_dict(),
                "world_size": acc.num_processes,
                "mixed_precision": _mixed_precision(cfg),
                "steps": steps,
            },
        )
    return state


# ---------------------------------------------------------------- the loop


def _micro_step(s: TrainState, batch: Batch, last: bool, acc_stats: StepAccumulator) -> None:
    cfg, acc, device = s.cfg, s.accelerator, s.accelerator.device
    policy = acc.unwrap_model(s.module)  # no-grad forwards bypass DDP
    prompts = batch.index.tolist()
    kl_partner = batch.kl_index.tolist()
    with torch.no_grad(), autocast(cfg.precision, device.type):
        if s.reference is not None:
            ref_logps = s.reference.lookup(prompts, prompts, device)
            ref_kl = s.reference.lookup(prompts, kl_partner, device) if cfg.loss_type == "kto" else None
        else:
            with s.model.disable_adapter():
                ref_logps = policy(batch.input_ids, batch.attention_mask, batch.completion_mask)
                ref_kl = (
                    policy(batch.kl_input_ids, batch.kl_attention_mask, batch.kl_completion_mask)
                    if cfg.loss_type == "kto"
                    else None
                )
        z0 = kl_raw = torch.zeros((), device=device)
        if cfg.loss_type == "kto":
            pol_kl = policy(batch.kl_input_ids, batch.kl_attention_mask, batch.kl_completion_mask)
            kl_raw = mismatched_log_ratio(pol_kl, ref_kl, valid=batch.kl_completion_mask.any(dim=1))
            z0 = kl_raw.clamp(min=0)  # = estimate_z0: the paper's max(0, .)
    sync = contextlib.nullcontext() if last else acc.no_sync(s.module)
    with sync:
        with autocast(cfg.precision, device.type):
            logps = s.module(batch.input_ids, batch.attention_mask, batch.completion_mask)
        out = kto_loss(
            logps,
            ref_logps.to(logps.dtype),
            batch.labels,
            z0,
            beta=cfg.beta,
            desirable_weight=cfg.desirable_weight,
            undesirable_weight=cfg.undesirable_weight,
            loss_type=cfg.loss_type,
            nll_weight=cfg.nll_weight,
            completion_tokens=batch.completion_mask[:, 1:].sum(dim=1),  # the positions CompletionLogps sums
        )
        acc.backward(out.loss / cfg.grad_accum)
    acc_stats.add(out.losses, out.kl, out.rewards, logps, batch.labels, batch.tokens, kl_raw, out.nll)


def _metrics_log(s: TrainState) -> AppendLog | None:
    """The metrics file, cut back to the resumed step (rows after the checkpoint are redone)."""
    if not s.accelerator.is_main_process:
        return None
    path = RunFolder(s.run_dir).metrics
    log_file = AppendLog(path)
    kept = [r for r in log_file.recover() if r.get("step", 0) <= s.start_step]
    write_jsonl_atomic(path, kept)
    s.history = kept
    return log_file


def train_loop(s: TrainState, progress: bool = True) -> None:
    from tqdm.auto import tqdm

    cfg, acc = s.cfg, s.accelerator
    n = acc.num_processes
    per = cfg.batch_size // n
    local = slice(acc.process_index * per, (acc.process_index + 1) * per)
    stats = StepAccumulator(acc.device)
    log_file = _metrics_log(s)
    trainable = [p for p in s.model.parameters() if p.requires_grad]
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
    bar = tqdm(
        total=s.steps, initial=s.start_step, desc="KTO", unit="step", disable=not (progress and acc.is_main_process)
    )
    s.module.train()
    for step in range(s.start_step, s.steps):
        t = time.perf_counter()
        stats.reset()
        for m in range(cfg.grad_accum):
            rows = s.plan[step * cfg.grad_accum + m]
            batch = collate(s.examples, rows, local, s.pad_id, cfg.max_length).to(acc.device)
            _micro_step(s, batch, last=m == cfg.grad_accum - 1, acc_stats=stats)
        grad_norm = acc.clip_grad_norm_(trainable, max_norm)
        finite = bool(torch.isfinite(grad_norm))  # gradients are synced, so every process agrees
        if finite:
            s.optimizer.step()
        else:
            s.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm (%s); update skipped", step + 1, grad_norm)
        s.optimizer.zero_grad(set_to_none=True)
        lr = s.scheduler.get_last_lr()[0]
        s.scheduler.step()
        row = {
            "step": step + 1,
            **stats.reduce(acc, n),
            "lr": lr,
            "grad_norm": float(grad_norm) if finite else None,
            "skipped": not finite,
        }
        dt = time.perf_counter() - t
        row.update({"seconds": dt, "samples/s": row["rows"] / dt, "tokens/s": row["tokens"] / dt})
        s.history.append(row)
        if log_file:
            log_file.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", kl=f"{row['kl']:.3f}", margin=f"{row['rewards/margins'] or 0:.3f}")
        if (step + 1) % cfg.save_steps == 0 and step + 1 < s.steps:
            save_checkpoint(
                RunFolder(s.run_dir).checkpoints,
                step + 1,
                s.model,
                s.optimizer,
                s.scheduler,
                acc,
                {"loss": row["loss"]},
                cfg.keep_checkpoints,
            )
    bar.close()
    if log_file:
        log_file.close()


# ---------------------------------------------------------------- outputs


def finish_training(s: TrainState, seconds: float) -> TrainResult:
    acc, run, cfg = s.accelerator, s.run_dir, s.cfg
    folder = RunFolder(run)
    acc.wait_for_everyone()
    adapter_dir, model_dir, plot = folder.adapter, (folder.model if cfg.merge else None), None
    final = s.history[-1] if s.history else {}
    if acc.is_main_process:
        s.model.save_pretrained(str(adapter_dir))
        if model_dir is not None:
            merged = s.model.merge_and_unload()
            merged.save_pretrained(str(model_dir))
            s.tokenizer.save_pretrained(str(model_dir))
        if cfg.plot:
            plot = plot_curves(s.history, folder.curves, title=f"KTO: {Path(cfg.data).name} on {cfg.model}")
        s.report.update(
            {
                "steps": s.steps,
                "skipped_steps": s.skipped_steps,
                "seconds": seconds,
                "world_size": acc.num_processes,
                "final": final,
            }
        )
        write_json_atomic(folder.report_path, s.report)  # written last: marks the run complete
    acc.wait_for_everyone()
    return TrainResult(
        run,
        s.steps,
        adapter_dir,
        model_dir,
        folder.metrics,
        plot,
        final,
        s.report,
        seconds,
        s.report.get("resumed_from"),
        acc.is_main_process,
    )
