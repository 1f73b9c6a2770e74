"""``run_finish``: quantization-aware finishing of a trained student, read top to bottom.

Why: a fine-tune's weight deltas are small next to a 4-bit step, so rounding the merged model
after training erases much of what it learned. Finishing trains the merged fp student briefly
*through* the quantizer that ships (:mod:`edge_kto.quant.fake`, bit-identical to GGUF Q4_0 and
onnxruntime int4 block 32), so the weights settle on grid points that still give the fp model's
answers. The saved model's linear weights lie exactly on the grid: exporting it is lossless.

    setup    fp student (teacher, frozen) + a trainable copy whose Linears fake-quantize
             their weights (straight-through), training rows -> token ids, a seeded batch plan
    loop     per step: KL(fp || fake-quant) on the completion tokens of every row
             + cross-entropy on the desirable rows' completions; AdamW; checkpoint
    outputs  model/ (fp32, weights on the grid), metrics.jsonl, finish_report.json (written last)

Full-parameter on the decoder's Linears and norms; the embedding (shipped Q8_0 / int8) stays
fixed. Resumes from its last checkpoint after a kill (the plan is a function of the seed).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edge_kto_runtime.defaults import MAX_NEW_TOKENS
from edge_kto_runtime.errors import InvalidInput

from .jsonl import AppendLog, write_json_atomic, write_jsonl_atomic
from .precision import PRECISIONS, autocast, use_training_attention
from .quant.fake import (
    ACTIVATIONS,
    FORMATS,
    mixed_8bit_layers,
    mixed_8bit_names,
    on_grid,
    quantizable_linears,
    unwrap_linears,
    wrap_linears,
)
from .resume import check_same_job, job_record
from .run_folder import FINISH, RunFolder, require_fp_model_dir

log = logging.getLogger(__name__)


@dataclass
class FinishConfig:
    """Quantization-aware finishing (QAT with a distillation loss to the fp student)."""

    source: str  # a training run folder (its merged model/) or an HF model folder
    data: str  # KTO rows of the *training* split (never the eval split)
    out: str  # finish folder: model/, checkpoints/, metrics.jsonl, finish_report.json
    format: str = "q4_0"  # the shipped grid: GGUF Q4_0 == ONNX int4 block 32 symmetric
    activations: str = "fp"  # "q8_0": also train through llama.cpp's 8-bit activation rounding
    steps: int = 60
    batch_size: int = 8
    lr: float = 2e-5
    kl_weight: float = 1.0  # KL(fp || fake-quant) per completion token, every row
    ce_weight: float = 1.0  # cross-entropy per completion token, desirable rows only
    max_length: int = 384
    mixed: bool = False  # the sensitive q/k/v/down projections ship at 8-bit: trained unquantized (see quant.fake)
    on_policy: bool = False  # also KL on the fp student's own greedy answers to the training prompts
    on_policy_max_new_tokens: int = MAX_NEW_TOKENS
    save_steps: int = 20
    seed: int = 0
    threads: int | None = None
    precision: str = "auto"  # the forward/backward arithmetic, as train's (edge_kto.precision); the weights stay fp32

    def validate(self) -> None:
        errs = []
        if self.format not in FORMATS:
            errs.append(f"format: one of {list(FORMATS)}, got {self.format!r}")
        if self.precision not in PRECISIONS:
            errs.append(f"precision: one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.activations not in ACTIVATIONS:
            errs.append(f"activations: one of {list(ACTIVATIONS)}, got {self.activations!r}")
        for name in ("steps", "batch_size", "max_length", "save_steps", "on_policy_max_new_tokens"):
            if getattr(self, name) < 1:
                errs.append(f"{name}: must be >= 1")
        if self.lr <= 0:
            errs.append("lr: must be > 0")
        if self.kl_weight < 0 or self.ce_weight < 0 or self.kl_weight + self.ce_weight == 0:
            errs.append("kl_weight/ce_weight: non-negative, not both 0")
        if errs:
            raise InvalidInput("invalid finish config:\n  " + "\n  ".join(errs))


@dataclass
class FinishResult:
    out: Path
    model_dir: Path
    steps: int
    resumed_from: int | None
    final: dict[str, Any]
    seconds: float


def source_model_dir(source: str | Path) -> Path:
    """The fp model a finish starts from: a run folder's merged model, or an HF folder."""
    return require_fp_model_dir(source)


def _rows(cfg: FinishConfig, tok: Any) -> list[tuple[list[int], list[int], bool]]:
    """(prompt ids, completion ids, desirable) for every training row, tokenized as training did."""
    from .data import read_kto
    from .train.tokenize import TokenizeReport, tokenize_example

    rep = TokenizeReport()
    rows = []
    for i, ex in enumerate(read_kto(cfg.data, seed=cfg.seed)):
        t = tokenize_example(tok, ex, i, cfg.max_length, cfg.max_length - 1, rep)
        if t is not None:
            rows.append((t.prompt_ids, t.completion_ids, t.label))
    if len(rows) < cfg.batch_size:
        raise InvalidInput(f"{cfg.data}: {len(rows)} usable rows, fewer than one finishing batch ({cfg.batch_size})")
    return rows


def _on_policy_rows(
    cfg: FinishConfig, model: Any, tok: Any, cache: Path, progress: bool
) -> list[tuple[list[int], list[int], bool]]:
    """The fp student's greedy answer to every distinct training prompt, as KL-only rows.

    Why: the teacher's answers are text the student would not itself write; the shipped model is
    asked to continue the student's *own* answers, so matching the fp student there is what keeps
    its greedy output (and task accuracy). Cached in ``cache`` so a resumed finish reuses them.
    """
    from .data import read_kto
    from .export.golden import chat_ids
    from .jsonl import iter_jsonl
    from .models.greedy import greedy_decode

    if cache.is_file():
        return [(r["prompt_ids"], r["completion_ids"], False) for _, r in iter_jsonl(cache)]
    prompts: dict[str, list[int]] = {}
    for ex in read_kto(cfg.data, seed=cfg.seed):
        key = json.dumps(ex.prompt, sort_keys=True)
        if key not in prompts:
            prompts[key] = chat_ids(tok, ex.prompt)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos = {tok.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    ids = sorted(prompts.values(), key=len)  # the rows' order, as before greedy_decode did its own batching
    if progress:
        print(f"on-policy answers (fp student, greedy) to {len(ids)} prompts", flush=True)
    rows = [
        {"prompt_ids": p, "completion_ids": c}
        for p, c in zip(ids, greedy_decode(model, ids, cfg.on_policy_max_new_tokens, pad_id, eos))
        if c and len(p) + len(c) <= cfg.max_length
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(cache, rows)
    return [(r["prompt_ids"], r["completion_ids"], False) for r in rows]


def _plan(n_rows: int, batch: int, steps: int, seed: int) -> list[list[int]]:
    rng, plan = random.Random(seed), []
    while len(plan) < steps:
        order = list(range(n_rows))
        rng.shuffle(order)
        plan += [order[j : j + batch] for j in range(0, n_rows - batch + 1, batch)]
    return plan[:steps]


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Decoder Linears and norms; the (tied) embedding / LM head stays fixed."""
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    emb |= {id(p) for p in model.get_output_embeddings().parameters()}
    params = []
    for p in model.parameters():
        p.requires_grad_(id(p) not in emb)
        if p.requires_grad:
            params.append(p)
    return params


def _completion_logits(
    model: Any, ids: torch.Tensor, att: torch.Tensor, comp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict completion tokens (the LM head runs only there), and the targets."""
    from .train.logps import causal_lm_parts

    backbone, head = causal_lm_parts(model)
    hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
    predicts = comp[:, 1:].bool()
    return head(hidden[:, :-1][predicts]).float(), ids[:, 1:][predicts]


def _step_loss(
    cfg: FinishConfig, teacher: Any, student: Any, batch: list[tuple[list[int], list[int], bool]], pad_id: int
) -> tuple[torch.Tensor, dict[str, float]]:
    from .train.batches import pad_pairs

    ids, att, comp = pad_pairs([(p, c) for p, c, _ in batch], pad_id, cfg.max_length)
    with torch.no_grad(), autocast(cfg.precision):
        t_logits, _ = _completion_logits(teacher, ids, att, comp)
    with autocast(cfg.precision):  # logits come back fp32 (_completion_logits): the losses below are fp32
        s_logits, targets = _completion_logits(student, ids, att, comp)
    s_logp, t_logp = F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    good_rows = torch.tensor([lab for _, _, lab in batch])
    token_good = good_rows.unsqueeze(1).expand_as(comp)[:, 1:][comp[:, 1:].bool()]
    nll = -s_logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ce = nll[token_good].mean() if token_good.any() else nll.sum() * 0
    top1 = (s_logits.argmax(-1) == t_logits.argmax(-1)).float().mean()
    loss = cfg.kl_weight * kl + cfg.ce_weight * ce
    return loss, {
        "loss": loss.item(),
        "kl": kl.item(),
        "ce": ce.item(),
        "top1_agree": top1.item(),
        "tokens": int(targets.numel()),
    }


def _latest_checkpoint(out: Path) -> tuple[int, Path] | None:
    found = [
        (int(p.name[5:]), p)
        for p in RunFolder(out, FINISH).checkpoints.glob("step-*")
        if p.name[5:].isdigit() and (p / "state.pt").is_file()
    ]
    return max(found) if found else None


def _save_checkpoint(out: Path, step: int, params: dict[str, torch.nn.Parameter], opt: Any, sched: Any) -> None:
    """Trainable weights + optimizer + schedule, written to a temp folder and renamed (kill-safe)."""
    ck = RunFolder(out, FINISH).checkpoints
    tmp = ck / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "step": step,
            "weights": {n: p.detach().clone() for n, p in params.items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
        },
        tmp / "state.pt",
    )
    os.replace(tmp, ck / f"step-{step}")
    for p in ck.glob("step-*"):  # keep the newest only: a full-parameter checkpoint is large
        if p.name != f"step-{step}":
            shutil.rmtree(p, ignore_errors=True)


def run_finish(cfg: FinishConfig, progress: bool = True) -> FinishResult:
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    cfg.validate()
    t0 = time.time()
    out = Path(cfg.out)
    folder = RunFolder(out, FINISH)
    if folder.finished():
        rep = folder.report()
        return FinishResult(out, folder.model, rep["steps"], rep.get("resumed_from"), rep.get("final", {}), 0.0)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    src = source_model_dir(cfg.source)
    tok = AutoTokenizer.from_pretrained(str(src))
    rows = _rows(cfg, tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(cfg.seed)

    # 1. The fp student (frozen teacher) and the copy that trains through the quantizer.
    teacher = use_training_attention(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval())
    student = use_training_attention(AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32))
    for p in teacher.parameters():
        p.requires_grad_(False)
    keep = mixed_8bit_names(student) if cfg.mixed else []
    wrapped = wrap_linears(student, cfg.format, cfg.activations, skip=tuple(keep))
    named = {n: p for n, p in student.named_parameters()}
    params = _trainable(student)
    names = {id(p): n for n, p in named.items()}
    by_name = {names[id(p)]: p for p in params}
    # fused: one kernel over the ~100M full-parameter weights (0.05 s a step on 2 cores vs 0.18 s unfused)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    sched = get_scheduler("cosine", opt, num_warmup_steps=max(1, cfg.steps // 10), num_training_steps=cfg.steps)
    if cfg.on_policy:
        rows += _on_policy_rows(cfg, teacher, tok, Path(cfg.out) / "on_policy.jsonl", progress)
    plan = _plan(len(rows), cfg.batch_size, cfg.steps, cfg.seed)

    # 2. Resume: weights, optimizer and schedule of the last checkpoint; metrics cut back to it.
    start, resumed = 0, None
    out.mkdir(parents=True, exist_ok=True)
    job = job_record({k: v for k, v in asdict(cfg).items() if k != "threads"}, {"data": cfg.data, "source model": src})
    last = _latest_checkpoint(out)
    if last is not None:  # a checkpoint is resumed only by the job that wrote it (changes named)
        check_same_job(out / "job.json", job)
    write_json_atomic(out / "job.json", job)
    if last is not None:
        state = torch.load(last[1] / "state.pt", weights_only=False)
        with torch.no_grad():
            for n, w in state["weights"].items():
                by_name[n].copy_(w)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = resumed = state["step"]
    metrics = AppendLog(folder.metrics)
    history = [r for r in metrics.recover() if r.get("step", 0) <= start]
    write_jsonl_atomic(folder.metrics, history)
    write_json_atomic(
        folder.config_path, {**asdict(cfg), "linears": len(wrapped), "rows": len(rows), "source_model": str(src)}
    )

    # 3. The loop.
    student.train()
    bar = tqdm(total=cfg.steps, initial=start, desc=f"finishing ({cfg.format})", unit="step", disable=not progress)
    for step in range(start, cfg.steps):
        t = time.perf_counter()
        loss, row = _step_loss(cfg, teacher, student, [rows[i] for i in plan[step]], pad_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, **row, "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t}
        history.append(row)
        metrics.append(row)
        bar.update(1)
        bar.set_postfix(kl=f"{row['kl']:.4f}", ce=f"{row['ce']:.3f}", top1=f"{row['top1_agree']:.3f}")
        if (step + 1) % cfg.save_steps == 0 and step + 1 < cfg.steps:
            _save_checkpoint(out, step + 1, by_name, opt, sched)
    bar.close()
    metrics.close()

    # 4. Outputs: weights snapped onto the grid, saved fp32 (so the exporters see them unchanged).
    unwrap_linears(student)
    model_dir = folder.model
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)
    final = history[-1] if history else {}
    report = {
        "format": cfg.format,
        "steps": cfg.steps,
        "resumed_from": resumed,
        "final": final,
        "linears": len(wrapped),
        "rows": len(rows),
        "seconds": time.time() - t0,
        "source_model": str(src),
        "mixed_8bit": {"layers": mixed_8bit_layers(student.config.num_hidden_layers), "modules": keep}
        if keep
        else None,
    }
    write_json_atomic(folder.report_path, report)  # written last: marks the finish complete
    shutil.rmtree(folder.checkpoints, ignore_errors=True)
    return FinishResult(out, model_dir, cfg.steps, resumed, final, report["seconds"])


def check_on_grid(model: torch.nn.Module, fmt: str = "q4_0", mixed: bool = False) -> list[str]:
    """Names of quantizable Linears whose weights are *not* on the grid (empty for a finished model)."""
    keep = set(mixed_8bit_names(model)) if mixed else set()
    return [n for n, m in quantizable_linears(model).items() if n not in keep and not on_grid(m.weight, fmt)]
