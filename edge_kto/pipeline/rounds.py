"""On-policy KTO rounds (``rounds: {count: K}``): after the recipe's training (round 0), each round
samples the current student on the training prompts, labels its own answers with the task's
labeler, mixes them with the teacher's labelled rows, and trains KTO once more with the previous
round's model as the reference (the adapter-disabled base is that model).

This is KTO's natural data (arXiv 2402.01306, section 4: unpaired binary feedback on the model's
own outputs): the round's undesirable rows are the mistakes the student makes now, not the
teacher's. Where the answers come from is ``source``: ``samples`` draws them in torch (batched
transformers sampling); ``device`` exports the student, serves it with the real runtime and
collects a simulated user's thumbs through ``/v1/feedback`` (:mod:`.device_feedback`).

A round is one pipeline stage (``round1`` .. ``roundK``), cached and resumed like the others: its
samples are seeded by round and its labelled rows are kept, so a rerun after a kill trains on the
same rows from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..label import STUDENT_SOURCES
from ..run_folder import RunFolder
from ..schema import KEY_OMITS_DEFAULT
from ..teacher.base import SamplingParams
from ..train import TrainConfig

SOURCES = ("samples", "device")


@dataclass
class RoundsSection:
    """How many on-policy rounds follow the training stage, and what each one samples and trains."""

    count: int = 0  # 0: no rounds (the recipe's training only)
    source: str = "samples"  # "samples" (torch sampling) or "device" (served bundle + /v1/feedback thumbs)
    serve_quant: str = "Q8_0"  # source device: the GGUF type the round's student is served as
    samples: int = 4  # the current student's answers per training prompt
    temperature: float = 0.8
    # Share of the teacher's labelled rows mixed in (seeded subsample). 0: the student's own answers only --
    # measured better on both tasks (benchmarks/RESULTS.md, "On-policy rounds"): the teacher's rows were
    # trained on already, and a second pass over them overtrains as a second KTO epoch does.
    teacher_fraction: float = 0.0
    epochs: float = 1.0
    lr: float = 5e-5  # lower than the first KTO pass: a round corrects, it does not relearn
    max_steps: int | None = None
    # NLL anchor on the round's desirable rows (TrainConfig.nll_weight); None: the training stage's value.
    nll_weight: float | None = field(default=None, metadata=KEY_OMITS_DEFAULT)

    def validate(self) -> None:
        from edge_kto_runtime.errors import InvalidInput

        errs = []
        if self.source not in SOURCES:
            errs.append(f"source: one of {SOURCES}, got {self.source!r}")
        if self.count < 0:
            errs.append("count: must be >= 0")
        if self.samples < 1:
            errs.append("samples: must be >= 1 (a round learns from the student's own answers)")
        if not 0.0 <= self.teacher_fraction <= 1.0:
            errs.append("teacher_fraction: must be within [0, 1]")
        if not 0 < self.temperature < math.inf:  # also NaN
            errs.append("temperature: must be > 0 (greedy answers repeat: one row per prompt at most)")
        if not 0 < self.lr < math.inf:
            errs.append(f"lr: must be a finite number > 0, got {self.lr!r}")
        if not 0 < self.epochs < math.inf:
            errs.append(f"epochs: must be > 0, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            errs.append(f"max_steps: must be >= 1 when given, got {self.max_steps!r}")
        if self.nll_weight is not None and not 0 <= self.nll_weight < math.inf:
            errs.append("nll_weight: must be >= 0")
        if self.source == "device":
            from ..export.candidates import llama_ftypes

            if self.serve_quant not in llama_ftypes():
                errs.append(f"serve_quant: unknown GGUF type {self.serve_quant!r} (e.g. Q8_0, Q4_K_M)")
        if errs:
            raise InvalidInput("rounds: " + "; ".join(errs))


@dataclass(frozen=True)
class RoundInputs:
    rounds: RoundsSection
    train: TrainConfig  # the KTO settings (beta, LoRA, batch, lengths); data / model / out set here
    index: int  # 1 .. count
    max_new_tokens: int  # the student's answer budget (the pipeline's generate.max_new_tokens)


def _seed(inp: RoundInputs) -> int:
    """The round's sampling seed: another for every round and for every training seed."""
    return 1000 * inp.index + inp.train.seed


def _mix(rows: list[dict], fraction: float, seed: int) -> list[dict]:
    """Every student row of the round, and a seeded share of the teacher's labelled rows."""
    teacher = [i for i, r in enumerate(rows) if r.get("source") not in STUDENT_SOURCES]
    drop = set(random.Random(seed).sample(teacher, len(teacher) - round(fraction * len(teacher))))
    return [r for i, r in enumerate(rows) if i not in drop]


def _device_rows(inp: RoundInputs, previous: Path, deps: dict[str, Any], d: Path, progress: bool) -> list[dict]:
    """The previous round's student served as a bundle; a simulated user's thumbs, this bundle's only."""
    from . import device_feedback

    r = inp.rounds
    info = device_feedback.collect(
        previous,
        deps["generate"].dir / "candidates.jsonl",
        d,
        r.samples,
        r.temperature,
        inp.max_new_tokens,
        _seed(inp),
        r.serve_quant,
        progress,
    )
    write_json_atomic(d / "feedback.summary.json", info)
    return device_feedback.device_rows(Path(info["rows"]), inp.index)


def run_round(inp: RoundInputs, d: Path, deps: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Sample the previous round's student, label, and train KTO on top of it (its own reference)."""
    from ..label import LabelConfig, OnPolicyConfig, run_label, summarize_labels
    from ..train import run_train

    run = RunFolder(d / "run")
    if run.finished():  # finished before the kill that lost done.json
        return {**run.report(), "label": _read_summary(d)}
    previous = RunFolder(deps["previous"].dir / "run").model
    r = inp.rounds
    data = d / "kto.jsonl"
    if not data.is_file():  # a kill during training keeps the labelled rows; sampling is seeded, so redoing it is exact
        rows = _device_rows(inp, previous, deps, d, progress) if r.source == "device" else []
        sampling = SamplingParams(
            n=r.samples, temperature=r.temperature, max_new_tokens=inp.max_new_tokens, seed=_seed(inp)
        )
        res = run_label(
            LabelConfig(
                candidates=str(deps["generate"].dir / "candidates.jsonl"),  # the teacher's, relabelled by the same rule
                out=str(d / "labelled.jsonl"),
                on_policy=OnPolicyConfig(str(previous), sampling) if r.source == "samples" else None,
                progress=progress,
            )
        )
        rows += [{**row, "round": inp.index} for _, row in iter_jsonl(res.out)]
        rows = _mix(rows, r.teacher_fraction, _seed(inp))
        _both_classes(rows, inp.index)
        write_json_atomic(d / "kto.summary.json", summarize_labels(rows))
        write_jsonl_atomic(data, rows)
    tc = replace(
        inp.train,
        data=str(data),
        model=str(previous),
        out=str(run.root),
        sft_steps=0,  # the previous round is the start and the reference; nothing to warm up
        sft_from=None,
        epochs=r.epochs,
        max_steps=r.max_steps,
        lr=r.lr,
        nll_weight=inp.train.nll_weight if r.nll_weight is None else r.nll_weight,
        seed=inp.train.seed + inp.index,
    )
    has_ckpt = run.has_checkpoint()
    report = run_train(tc, resume=has_ckpt, force=not has_ckpt, progress=progress).report
    return {**report, "label": _read_summary(d)}


def _both_classes(rows: list[dict], index: int) -> None:
    """The trainer refuses data of one label only; refuse the round first, saying how to get both."""
    from edge_kto_runtime.errors import InvalidInput

    labels = {bool(r["label"]) for r in rows}
    if len(labels) < 2:
        what = (
            "no labelled rows"
            if not labels
            else f"{len(rows)} rows, all {'desirable' if True in labels else 'undesirable'}"
        )
        raise InvalidInput(
            f"round{index}: {what}; KTO needs both labels -- sample more (rounds.samples, rounds.temperature) "
            "or mix in the teacher's labelled rows (rounds.teacher_fraction > 0)"
        )


def _read_summary(d: Path) -> dict[str, Any]:
    p = d / "kto.summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}
