"""The KTO loss, exactly as in the paper (arXiv 2402.01306, Eq. 7), with the z0 reference point
estimated from mismatched pairs and averaged over every process.

    r(x, y)  = log pi_theta(y|x) - log pi_ref(y|x)           summed over completion tokens
    z0       = max(0, mean_j [log pi_theta(y'_j|x_j) - log pi_ref(y'_j|x_j)])   mismatched pairs, no grad
    v(x, y)  = lambda_D * sigmoid(beta * (r - z0))   if y is desirable
             = lambda_U * sigmoid(beta * (z0 - r))   if y is undesirable
    loss     = mean(lambda_y - v(x, y))

``apo_zero_unpaired`` (arXiv 2408.06266) drops z0: desirable 1 - sigmoid(beta r), undesirable sigmoid(beta r).

``nll_weight`` > 0 adds ``nll_weight * NLL`` of the desirable completions (mean over their tokens): the
anchor of iterative RPO (Pang et al. 2024, arXiv 2404.19733; TRL's ``rpo_alpha`` for DPO). Without it a
preference loss on near-miss pairs can lower the desirable answers' own likelihood (their reward goes
negative while the margin grows), as the demo task's teacher-mixed on-policy round did. 0 is the paper's
KTO; on that task's best round setting the anchor did not help (benchmarks/RESULTS.md, "On-policy rounds").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from edge_kto_runtime.errors import InvalidInput

LOSS_TYPES = ("kto", "apo_zero_unpaired")


@dataclass
class KTOLossOutput:
    loss: torch.Tensor  # scalar, mean over this process's rows
    kl: torch.Tensor  # z0 (detached, global)
    rewards: torch.Tensor  # beta * r per row (detached)
    losses: torch.Tensor  # per-row weighted KTO loss, in input order (the NLL term is not in it)
    nll: torch.Tensor  # NLL per desirable token (detached; 0 without desirable rows or completion_tokens)


def estimate_z0(
    policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean KL log-ratio over mismatched pairs, summed and counted across all processes, clamped at 0
    (the paper's ``max(0, .)``, as TRL's ``.clamp(min=0)``)."""
    return mismatched_log_ratio(policy_kl_logps, ref_kl_logps, valid).clamp(min=0)


def mismatched_log_ratio(
    policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """z0 before the clamp: the mean of ``log pi_theta(y'|x) - log pi_ref(y'|x)`` over mismatched pairs.

    Logged as ``kl_raw``: once the policy has learned its answers it gives *another* prompt's answer
    less probability than the reference does, this mean turns negative and z0 reads 0 -- the
    estimate, not the policy's divergence, is what is zero then.
    ``valid`` masks out empty mismatched sequences (no completion tokens survived truncation).
    Sum and count are all-reduced separately so uneven per-process batches weigh each pair once.
    """
    with torch.no_grad():
        ratio = (policy_kl_logps - ref_kl_logps).detach().float()
        if valid is None:
            valid = torch.ones_like(ratio, dtype=torch.bool)
        stats = torch.stack([(ratio * valid).sum(), valid.sum().float()])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return stats[0] / stats[1].clamp(min=1)


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    z0: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    loss_type: str = "kto",
    nll_weight: float = 0.0,
    completion_tokens: torch.Tensor | None = None,
) -> KTOLossOutput:
    """Per-row KTO losses for summed completion log-probs; ``labels`` is a bool tensor (True = desirable).

    ``completion_tokens`` (tokens summed into each row's log-prob) is needed when ``nll_weight`` > 0."""
    if loss_type not in LOSS_TYPES:
        raise InvalidInput(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    labels = labels.bool()
    r = policy_logps - ref_logps
    if loss_type == "kto":
        z = z0.to(r.dtype)
        desirable = 1 - F.sigmoid(beta * (r - z))
        undesirable = 1 - F.sigmoid(beta * (z - r))
    else:
        desirable = 1 - F.sigmoid(beta * r)
        undesirable = F.sigmoid(beta * r)
    losses = torch.where(labels, desirable_weight * desirable, undesirable_weight * undesirable)
    if completion_tokens is None and nll_weight:
        raise InvalidInput("nll_weight > 0 needs completion_tokens (the token count behind each row's log-prob)")
    nll = (
        policy_logps.new_zeros(())
        if completion_tokens is None
        else desirable_nll(policy_logps, labels, completion_tokens)
    )
    loss = losses.mean() + nll_weight * nll if nll_weight else losses.mean()
    return KTOLossOutput(loss=loss, kl=z0.detach(), rewards=(beta * r).detach(), losses=losses, nll=nll.detach())


def desirable_nll(policy_logps: torch.Tensor, labels: torch.Tensor, completion_tokens: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per token of the desirable completions (TRL's ``nll_loss`` on chosen);
    logged whatever ``nll_weight``: its rise during training is the desirable answers losing likelihood."""
    d = labels.bool()
    return -(policy_logps[d].sum()) / completion_tokens[d].sum().clamp(min=1).to(policy_logps.dtype)
