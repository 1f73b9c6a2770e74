"""``edge-kto train`` end to end on a tiny model: run folder, learning, 2 processes vs 1,
kill -9 + resume, bad input, NaN guard, SFT warm start, reference cache."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port, write_jsonl

from edge_kto.train import TrainConfig, run_train
from edge_kto.train.recipe import finish_training, setup_training, train_loop
from edge_kto_runtime.errors import InvalidInput


def _arith_rows(n: int, seed: int = 0) -> list[dict]:
    """Desirable: the right sum, stated plainly. Undesirable: a wrong, hedged answer. Classes alternate."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        good = i % 2 == 0
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"What is {a} plus {b}?",
                "completion": f"{a} plus {b} is {a + b}." if good else f"Hmm, maybe {a * b + 3}? Not sure at all.",
                "label": good,
            }
        )
    return rows


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "kto.jsonl", _arith_rows(48))


def _cfg(tmp_path: Path, model: Path, data: Path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        model=str(model),
        out=str(tmp_path / "run"),
        batch_size=8,
        max_steps=4,
        lr=1e-3,
        warmup_ratio=0.0,
        cache_dir=str(tmp_path / "refcache"),
        plot=False,
        # fp32: these tests compare numbers across process counts, resumes and reference paths to 1e-5;
        # "auto" is bf16 on a CPU with native bf16 (test_bf16_and_fp32_runs_follow_each_other_in_one_process)
        precision="fp32",
    )
    base.update(kw)
    return TrainConfig.from_dict(base)


@pytest.mark.integration
def test_bf16_and_fp32_runs_follow_each_other_in_one_process(tmp_path, tiny_model_dir, data):
    """Autocast is the trainer's own, so a bf16 run after an fp32 one in the same process is not refused
    (accelerate fixes its mixed_precision once per process), and bf16 training gives finite numbers."""
    for precision in ("fp32", "bf16", "fp32"):
        cfg = _cfg(tmp_path / precision, tiny_model_dir, data, max_steps=2, precision=precision, merge=False)
        res = run_train(cfg, progress=False, force=True)
        rows = [json.loads(x) for x in res.metrics_path.read_text().splitlines()]
        assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
        assert json.loads((tmp_path / precision / "run" / "config.json").read_text())["mixed_precision"] == (
            "bf16" if precision == "bf16" else "no"
        )


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _cli(*args: str, env_extra: dict | None = None, torchrun: int = 0) -> list[str]:
    if torchrun:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            "-m",
            "edge_kto.cli",
            *args,
        ]
    return [sys.executable, "-m", "edge_kto.cli", *args]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.integration
def test_run_folder_holds_adapter_merged_model_metrics_and_curves(tmp_path, tiny_model_dir, data):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = run_train(_cfg(tmp_path, tiny_model_dir, data, plot=True), progress=False)
    run = res.run_dir
    assert {p.name for p in run.iterdir()} >= {
        "adapter",
        "model",
        "metrics.jsonl",
        "curves.png",
        "config.json",
        "train_report.json",
    }
    assert (run / "curves.png").stat().st_size > 10_000
    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for k in (
        "loss",
        "kl",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "lr",
        "samples/s",
        "tokens/s",
        "grad_norm",
        "kl_raw",
    ):
        assert all(isinstance(r[k], float) for r in rows), k
    assert all(r["kl"] == pytest.approx(max(r["kl_raw"], 0.0), abs=1e-9) for r in rows)  # z0 = max(0, kl_raw)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["beta"] == 0.1 and cfg["lora"]["r"] == 8 and cfg["world_size"] == 1
    report = json.loads((run / "train_report.json").read_text())
    assert report["kept"] == 48 and report["desirable"] == 24 and report["eq8_in_range"]

    # The merged model equals base + adapter, and carries the tokenizer with its chat template.
    ids = torch.tensor([[1, 520, 3300, 2045, 28, 30, 9, 17]])
    merged = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), run / "adapter"
    )
    with torch.no_grad():
        a, b = merged(ids).logits, with_adapter(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(ids).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, base, atol=1e-4)
    assert AutoTokenizer.from_pretrained(run / "model").chat_template


@pytest.mark.integration
def test_learning_raises_margin_and_desirable_logps(tmp_path, tiny_model_dir, data):
    from edge_kto.data import read_kto
    from edge_kto.models import load_model
    from edge_kto.train.logps import CompletionLogps
    from edge_kto.train.tokenize import tokenize_all

    res = run_train(_cfg(tmp_path, tiny_model_dir, data, max_steps=30, lr=3e-3, beta=0.5), progress=False)
    rows = _metrics(res.run_dir)
    early = sum(r["rewards/margins"] for r in rows[:3]) / 3
    late = sum(r["rewards/margins"] for r in rows[-5:]) / 5
    assert late > early + 0.5 and late > 0.5, (early, late)
    assert sum(r["loss"] for r in rows[-5:]) / 5 < rows[0]["loss"] - 0.02

    def gap(model_dir):  # mean log p(desirable) - mean log p(undesirable) over the data
        model, tok = load_model(model_dir)
        ex = tokenize_all(tok, read_kto(data), 512, 256).examples
        from edge_kto.train.batches import pad_pairs

        with torch.no_grad():
            lp = CompletionLogps(model)(*pad_pairs([(e.prompt_ids, e.completion_ids) for e in ex], 0, 512))
        lab = torch.tensor([e.label for e in ex])
        return (lp[lab].mean() - lp[~lab].mean()).item()

    before, after = gap(tiny_model_dir), gap(res.model_dir)
    assert after > before + 1.0, (before, after)


@pytest.mark.integration
def test_two_processes_give_the_same_z0_loss_and_adapter_as_one(tmp_path, tiny_model_dir, data):
    common = [
        "train",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--lr",
        "3e-3",
        "--warmup-ratio",
        "0",
        "--precision",
        "fp32",  # the numbers are compared to 1e-5
        "--quiet",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, n in ((one, 0), (two, 2)):
        p = subprocess.run(
            _cli(*common, "--out", str(out), "--cache-dir", str(out) + "-cache", torchrun=n),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    m1, m2 = _metrics(one), _metrics(two)
    assert len(m1) == len(m2) == 6
    for a, b in zip(m1, m2):
        for k in ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
            assert a[k] == pytest.approx(b[k], abs=1e-5), (k, a[k], b[k])
    w1, w2 = _adapter(one), _adapter(two)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def _z0_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from edge_kto.train.loss import estimate_z0, kto_loss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(10, generator=g) + 0.5, torch.randn(10, generator=g)
    valid = torch.tensor([True] * 9 + [False])  # uneven: process 1 has an empty KL sequence
    lab, logp, ref_lp = torch.arange(10) % 3 == 0, torch.randn(10, generator=g), torch.randn(10, generator=g)
    part = slice(rank * 5, rank * 5 + 5)
    z0 = estimate_z0(pol[part], ref[part], valid[part])
    loss = kto_loss(logp[part], ref_lp[part], lab[part], z0, beta=0.5).loss.reshape(1)
    dist.all_reduce(loss)
    torch.save({"z0": z0, "loss": loss / 2}, f"{out}-{rank}.pt")
    dist.destroy_process_group()


def test_z0_and_loss_across_two_gloo_processes_equal_one_process_on_the_union():
    import tempfile

    import torch.multiprocessing as mp

    from edge_kto.train.loss import estimate_z0, kto_loss

    out = tempfile.mkdtemp() + "/z0"
    mp.spawn(_z0_worker, args=(free_port(), out), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    pol, ref = torch.randn(10, generator=g) + 0.5, torch.randn(10, generator=g)
    valid = torch.tensor([True] * 9 + [False])
    lab, logp, ref_lp = torch.arange(10) % 3 == 0, torch.randn(10, generator=g), torch.randn(10, generator=g)
    z0 = estimate_z0(pol, ref, valid)
    loss = kto_loss(logp, ref_lp, lab, z0, beta=0.5).loss
    assert z0.item() > 0
    for rank in (0, 1):
        got = torch.load(f"{out}-{rank}.pt")
        assert got["z0"].item() == pytest.approx(z0.item(), abs=1e-6)
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-6)


@pytest.mark.integration
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, data):
    steps, every = 40, 4
    straight = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "straight"), max_steps=steps, save_steps=every),
        progress=False,
    )
    out = tmp_path / "killed"
    args = [
        "train",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--max-steps",
        str(steps),
        "--lr",
        "1e-3",
        "--warmup-ratio",
        "0",
        "--precision",
        "fp32",  # as _cfg: compared with the straight run
        "--save-steps",
        str(every),
        "--cache-dir",
        str(tmp_path / "refcache"),
        "--quiet",
    ]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-0000008").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "train_report.json").exists()
    p = subprocess.run(_cli(*args, "--resume"), env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from step" in p.stdout
    rows = _metrics(out)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), "metrics cut back to the checkpoint and redone once"
    ref = _metrics(straight.run_dir)
    assert rows[-1]["loss"] == pytest.approx(ref[-1]["loss"], abs=1e-6)
    a, b = _adapter(out), _adapter(straight.run_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.integration
def test_precomputed_reference_equals_the_live_reference_and_is_cached(tmp_path, tiny_model_dir, data):
    pre = run_train(_cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "pre")), progress=False)
    live = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "live"), precompute_ref=False), progress=False
    )
    again = run_train(_cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "again")), progress=False)
    assert pre.report["reference"]["cached"] is False and again.report["reference"]["cached"] is True
    for a, b, c in zip(_metrics(pre.run_dir), _metrics(live.run_dir), _metrics(again.run_dir)):
        for k in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
            assert a[k] == pytest.approx(b[k], abs=1e-5) and a[k] == c[k]


@pytest.mark.integration
def test_gradient_checkpointing_and_grad_accum_keep_the_numbers(tmp_path, tiny_model_dir, data):
    plain = run_train(_cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "a"), max_steps=2), progress=False)
    ckpt = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "b"), max_steps=2, gradient_checkpointing=True),
        progress=False,
    )
    for a, b in zip(_metrics(plain.run_dir), _metrics(ckpt.run_dir)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    accum = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "c"), max_steps=2, grad_accum=2), progress=False
    )
    assert [r["rows"] for r in _metrics(accum.run_dir)] == [16, 16]


@pytest.mark.integration
def test_nan_guard_skips_the_update_and_training_continues(tmp_path, tiny_model_dir, data):
    s = setup_training(_cfg(tmp_path, tiny_model_dir, data, max_steps=4), progress=False)
    head = s.model.get_base_model().get_output_embeddings()
    calls = {"n": 0}

    def poison(_mod, _inp, out):  # two head calls per step (policy KL + target); poison step 2
        calls["n"] += 1
        return out * float("nan") if calls["n"] in (3, 4) else out

    head.register_forward_hook(poison)
    train_loop(s, progress=False)
    res = finish_training(s, seconds=0.0)
    rows = _metrics(res.run_dir)
    assert [r["skipped"] for r in rows] == [False, True, False, False] and rows[1]["grad_norm"] is None
    assert res.report["skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in s.model.parameters())
    assert all(r["loss"] == r["loss"] for i, r in enumerate(rows) if i != 1)  # finite again after the skip


@pytest.mark.parametrize(
    "case, rows, kw, match",
    [
        ("empty", [], {}, "no training rows"),
        ("one class", [dict(r, label=True) for r in _arith_rows(16)], {}, "all 16 rows are desirable"),
        ("too long", _arith_rows(16), {"max_length": 8, "max_prompt_length": 4}, "every row is too long"),
        ("small", _arith_rows(6), {}, "fewer than one batch"),
        ("label type", [dict(r, label="true") for r in _arith_rows(8)], {}, "kto.jsonl:1: field 'label'"),
        ("batch of one", _arith_rows(8), {"batch_size": 1}, "batch_size"),
    ],
)
@pytest.mark.integration
def test_bad_input_is_refused_before_any_compute(tmp_path, tiny_model_dir, case, rows, kw, match):
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        run_train(_cfg(tmp_path, tiny_model_dir, data, **kw), progress=False)
    assert not (tmp_path / "run").exists(), "nothing written for refused input"


@pytest.mark.integration
def test_existing_run_needs_resume_or_force(tmp_path, tiny_model_dir, data):
    cfg = _cfg(tmp_path, tiny_model_dir, data, max_steps=1)
    run_train(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume .* --force"):
        run_train(cfg, progress=False)
    with pytest.raises(FileExistsError, match="already finished"):
        run_train(cfg, resume=True, progress=False)
    assert run_train(cfg, force=True, progress=False).steps == 1


@pytest.mark.integration
def test_sft_warm_start_becomes_the_reference(tmp_path, tiny_model_dir, data):
    plain = run_train(_cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "plain"), max_steps=1), progress=False)
    sft = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "sft"), max_steps=1, sft_steps=15, sft_lr=5e-3),
        progress=False,
    )
    nll = [json.loads(x)["nll"] for x in (sft.run_dir / "sft_metrics.jsonl").read_text().splitlines()]
    assert len(nll) == 15 and sum(nll[-3:]) < sum(nll[:3])
    assert (sft.run_dir / "sft_adapter" / "adapter_config.json").exists()
    p, s = _metrics(plain.run_dir)[0], _metrics(sft.run_dir)[0]
    assert s["logps/chosen"] > p["logps/chosen"] + 5  # the SFT model starts KTO...
    assert s["rewards/chosen"] == 0.0 and s["rewards/rejected"] == 0.0  # ...and is its reference (r = 0 at step 1)

    # sft_from: a second KTO run on the same SFT model, without training SFT again
    adapter = str(sft.run_dir / "sft_adapter")
    reuse = run_train(
        _cfg(tmp_path, tiny_model_dir, data, out=str(tmp_path / "reuse"), max_steps=1, sft_from=adapter), progress=False
    )
    r = _metrics(reuse.run_dir)[0]
    assert not (reuse.run_dir / "sft_metrics.jsonl").exists()
    assert r["logps/chosen"] == pytest.approx(s["logps/chosen"], abs=1e-3)
    assert r["rewards/chosen"] == 0.0
    with pytest.raises(InvalidInput, match="sft_from: .*nowhere.* adapter_config.json"):
        _cfg(tmp_path, tiny_model_dir, data, sft_from=str(tmp_path / "nowhere")).validate()


@pytest.mark.integration
def test_train_cli_reads_a_yaml_config_and_flags_override_it(tmp_path, tiny_model_dir, data):
    from edge_kto.cli import main

    cfg = tmp_path / "train.yaml"
    cfg.write_text(
        f"train:\n  data: {data}\n  model: {tiny_model_dir}\n  out: {tmp_path / 'y'}\n  max_steps: 2\n"
        f"  beta: 0.3\n  lora:\n    r: 4\n  cache_dir: {tmp_path / 'c'}\n  plot: false\n"
    )
    assert main(["train", "--config", str(cfg), "--beta", "0.2", "--quiet"]) == 0
    eff = json.loads((tmp_path / "y" / "config.json").read_text())
    assert (eff["beta"], eff["lora"]["r"], eff["max_steps"]) == (0.2, 4, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  betta: 0.1\n")
    assert main(["train", "--config", str(bad)]) == 2


@pytest.mark.integration
def test_cli_reports_an_existing_run_as_an_error_not_a_traceback(tmp_path, tiny_model_dir, data, capsys):
    from edge_kto.cli import main

    args = [
        "train",
        "--data",
        str(data),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path / "r"),
        "--max-steps",
        "1",
        "--cache-dir",
        str(tmp_path / "c"),
        "--quiet",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
