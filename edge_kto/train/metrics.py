"""Per-step training metrics, reduced over micro-batches and processes, and their plot.

Field names follow TRL's KTO trainer (``kl``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``logps/chosen``, ``logps/rejected``) so curves compare one to one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..jsonl import write_atomic

# Sums accumulated over an optimizer step's micro-batches (then summed over processes).
_FIELDS = (
    "loss_sum",
    "rows",
    "kl_sum",
    "kl_n",
    "kl_raw_sum",
    "chosen_reward",
    "chosen_logps",
    "n_chosen",
    "rejected_reward",
    "rejected_logps",
    "n_rejected",
    "tokens",
    "nll_sum",
    "nll_n",
)


class StepAccumulator:
    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(_FIELDS), dtype=torch.float64, device=self.device)

    def add(
        self,
        losses: torch.Tensor,
        kl: torch.Tensor,
        rewards: torch.Tensor,
        logps: torch.Tensor,
        labels: torch.Tensor,
        tokens: int,
        kl_raw: torch.Tensor | None = None,
        nll: torch.Tensor | None = None,
    ) -> None:
        d, u = labels.bool(), ~labels.bool()
        vals = [
            losses.detach().double().sum(),
            float(len(losses)),
            kl.detach().double(),
            1.0,
            (kl if kl_raw is None else kl_raw).detach().double(),
            rewards[d].double().sum(),
            logps.detach()[d].double().sum(),
            float(d.sum()),
            rewards[u].double().sum(),
            logps.detach()[u].double().sum(),
            float(u.sum()),
            float(tokens),
            0.0 if nll is None else nll.detach().double(),
            float(nll is not None and bool(d.any())),  # micro-batches that had desirable rows to measure
        ]
        self.sums += torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in vals])

    def reduce(self, accelerator: Any, n_processes: int) -> dict[str, float]:
        s = accelerator.reduce(self.sums, reduction="sum") if n_processes > 1 else self.sums
        v = dict(zip(_FIELDS, s.tolist()))
        div = lambda a, b: a / b if b else None  # noqa: E731  (no row of that class in this step)
        out = {
            "loss": div(v["loss_sum"], v["rows"]),
            "kl": div(v["kl_sum"], v["kl_n"]),  # z0 is global already: every process holds the same value
            "kl_raw": div(v["kl_raw_sum"], v["kl_n"]),  # z0 before the clamp at 0 (negative: z0 reads 0)
            "rewards/chosen": div(v["chosen_reward"], v["n_chosen"]),
            "rewards/rejected": div(v["rejected_reward"], v["n_rejected"]),
            "logps/chosen": div(v["chosen_logps"], v["n_chosen"]),
            "logps/rejected": div(v["rejected_logps"], v["n_rejected"]),
            "rows": int(v["rows"]),
            "tokens": int(v["tokens"]),
            # NLL per desirable token (logged whatever nll_weight), averaged over the micro-batches that had any
            "nll": div(v["nll_sum"], v["nll_n"]),
        }
        both = out["rewards/chosen"] is not None and out["rewards/rejected"] is not None
        out["rewards/margins"] = out["rewards/chosen"] - out["rewards/rejected"] if both else None
        return out


def _finite(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(rows: list[dict], out: Path, title: str = "KTO training") -> Path | None:
    """loss, kl, rewards and log-probs against the step; written atomically as PNG."""
    if not rows:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("loss", ["loss"]),
        ("kl (z0, and before its clamp at 0)", ["kl", "kl_raw"]),
        ("rewards", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
        ("completion log-probs", ["logps/chosen", "logps/rejected"]),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (name, keys) in zip(axes.flat, panels):
        for k in keys:
            x, y = _finite(rows, k)
            if x:
                ax.plot(x, y, label=k, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_atomic(out, buf.getvalue())
    return out
