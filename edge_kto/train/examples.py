"""Rows -> token ids, with every check that can refuse a dataset before any compute is spent.

Refused (clear message, nothing loaded or written): no rows; one class only (KTO's loss needs
desirable and undesirable rows); every row too long for ``max_length``/``max_prompt_length``;
fewer usable rows than one batch. Warned: rows dropped or truncated, class weights outside the
paper's Eq. 8 range.
"""

from __future__ import annotations

import logging
from typing import Any

from edge_kto_runtime.errors import InvalidInput

from ..data import KTOExample
from ..stats import EQ8_HIGH, EQ8_LOW, eq8_ratio, kto_weight_range
from .config import TrainConfig
from .tokenize import Tokenized, tokenize_all

log = logging.getLogger(__name__)


class TrainDataError(InvalidInput):
    """The dataset cannot be trained on as configured."""


def _class_counts(labels: list[bool]) -> tuple[int, int]:
    d = sum(1 for x in labels if x)
    return d, len(labels) - d


def prepare_examples(
    rows: list[KTOExample], tok: Any, cfg: TrainConfig, source: str
) -> tuple[list[Tokenized], dict[str, Any]]:
    if not rows:
        raise TrainDataError(f"{source}: no training rows (the file is empty)")
    n_d, n_u = _class_counts([r.label for r in rows])
    if not n_d or not n_u:
        only = "desirable" if n_d else "undesirable"
        fix = (
            "add undesirable rows, e.g. the student's own samples (`edge-kto label --student ...`)"
            if n_d
            else "no answer passed the labeler: sample more per prompt (-n), use a stronger teacher, "
            "or check the verifier and the teacher context"
        )
        raise TrainDataError(
            f"{source}: all {len(rows)} rows are {only}; KTO needs both desirable (label true) and "
            f"undesirable (label false) rows: {fix}"
        )
    rep = tokenize_all(tok, rows, cfg.max_length, cfg.max_prompt_length)
    if not rep.examples:
        raise TrainDataError(
            f"{source}: every row is too long: {rep.prompt_too_long} prompt(s) exceed max_prompt_length="
            f"{cfg.max_prompt_length} or leave no room under max_length={cfg.max_length}, "
            f"{rep.no_completion_left} had no completion token left. Raise the limits or shorten the prompts."
        )
    k_d, k_u = _class_counts([e.label for e in rep.examples])
    if not k_d or not k_u:
        raise TrainDataError(
            f"{source}: after dropping rows that do not fit max_length={cfg.max_length}, only "
            f"{'desirable' if k_d else 'undesirable'} rows are left ({len(rep.examples)}); raise the limits"
        )
    if len(rep.examples) < cfg.batch_size:
        raise TrainDataError(
            f"{source}: {len(rep.examples)} usable rows, fewer than one batch (batch_size={cfg.batch_size}); "
            f"lower batch_size or add rows"
        )
    dropped = rep.prompt_too_long + rep.no_completion_left
    if dropped or rep.truncated:
        log.warning(
            "%s: %d row(s) dropped (did not fit), %d completion(s) truncated to max_length=%d",
            source,
            dropped,
            rep.truncated,
            cfg.max_length,
        )
    ratio = eq8_ratio(k_d, k_u, cfg.desirable_weight, cfg.undesirable_weight)
    wr = kto_weight_range(k_d, k_u)
    if not EQ8_LOW <= ratio <= EQ8_HIGH:
        log.warning(
            "class weights outside the KTO paper's Eq. 8 range: lambda_D*n_D/(lambda_U*n_U) = %.3f "
            "(n_D=%d, n_U=%d, lambda_D=%g, lambda_U=%g), recommended [1, 4/3]. %s",
            ratio,
            k_d,
            k_u,
            cfg.desirable_weight,
            cfg.undesirable_weight,
            wr.describe(),
        )
    report = {
        "rows": len(rows),
        "kept": rep.kept,
        "desirable": k_d,
        "undesirable": k_u,
        "dropped_prompt_too_long": rep.prompt_too_long,
        "dropped_no_completion_left": rep.no_completion_left,
        "truncated": rep.truncated,
        "prefix_mismatch": rep.prefix_mismatch,
        "eq8_ratio": ratio,
        "eq8_in_range": EQ8_LOW <= ratio <= EQ8_HIGH,
        "recommended_weights": wr.recommended,
    }
    return rep.examples, report
