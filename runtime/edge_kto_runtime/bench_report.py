"""The bench report as a Markdown table and a PNG (latency CDFs with p50/p90/p99, per-run timeline)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from .atomic import write_atomic


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"bench: {report['n_prompt']}-token prompt, {report['n_gen']} generated tokens, "
        f"{report['config']['runs']} runs after {report['config']['warmup']} warm-ups, {env['n_threads']} threads, "
        f"{env['cpu']} ({env['os']})" + (", prefix cache on" if report["config"]["prefix_cache"] else ""),
        "",
        "| artifact | quant | TTFT p50 | TTFT p90 | TTFT p99 (95% CI) | E2E p50 | E2E p90 | E2E p99 (95% CI) | "
        "TPOT p50 | gen tok/s (avg ± sd) | prompt tok/s | load s | vs fastest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(x: float) -> str:
        return f"{1000 * x:.0f}"

    for r in report["results"]:
        t, e = r["ttft_s"], r["e2e_s"]
        ci = lambda d: f" ({ms(d['p99_ci95'][0])}–{ms(d['p99_ci95'][1])})" if "p99_ci95" in d else ""  # noqa: E731
        tp = ms(r["tpot_s"]["p50"]) if r["tpot_s"] else "-"
        lines.append(
            f"| {r['artifact']} | {r['quant']} | {ms(t['p50'])} | {ms(t['p90'])} | {ms(t['p99'])}{ci(t)} | "
            f"{ms(e['p50'])} | {ms(e['p90'])} | {ms(e['p99'])}{ci(e)} | {tp} | {r['avg_ts']:.1f} ± "
            f"{r['stddev_ts']:.1f} | "
            f"{r['pp_avg_ts']:.0f} | {r['load_s']:.2f} | {r['e2e_p50_vs_fastest']:.2f}x |"
        )
    lines.append("")
    lines.append(f"times in ms; peak RSS {report['peak_rss_mb']:.0f} MB (all artifacts loaded together)")
    for w in report["warnings"]:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], out: str | Path) -> Path:
    """Latency CDFs (TTFT, E2E) with p50/p90/p99 marked, and E2E per run (drift shows as a slope)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in report["results"]:
        for ax, key in ((axes[0], "ttft"), (axes[1], "e2e")):
            xs = sorted(1000 * run[key] for run in r["runs"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            (line,) = ax.step(xs, ys, where="post", label=f"{r['artifact']} ({r['quant']})")
            for q in ("p50", "p90", "p99"):
                ax.axvline(1000 * r[f"{key}_s"][q], color=line.get_color(), linestyle=":", linewidth=0.9)
                ax.annotate(
                    q,
                    (1000 * r[f"{key}_s"][q], {"p50": 0.5, "p90": 0.9, "p99": 0.99}[q]),
                    fontsize=7,
                    color=line.get_color(),
                )
        axes[2].plot([1000 * run["e2e"] for run in r["runs"]], linewidth=0.8, label=r["artifact"])
    for ax, title in zip(axes, ("TTFT CDF (ms)", "end-to-end CDF (ms)", "end-to-end per run (ms)")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of runs")
    axes[2].set_xlabel("run")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"edge-runtime bench: {report['n_prompt']} prompt + {report['n_gen']} generated tokens, "
        f"{report['n_threads']} threads"
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(out, buf.getvalue())
