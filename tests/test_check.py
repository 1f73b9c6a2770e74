"""The alignment check: KL definitions, the gate passing Q8_0 and failing broken artifacts, and the
device-side check agreeing with the server-side one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import write_jsonl

from edge_kto.check import CheckConfig, run_check
from edge_kto.export import ExportConfig, run_export
from edge_kto.export.golden import detail_rows
from edge_kto_runtime.check import check_artifact, kl_full, kl_topk, run_device_check
from edge_kto_runtime.model import load
from edge_kto_runtime.verifiers import get_verifier


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_kl_matches_numpy_and_llama_cpp_definition():
    rng = np.random.default_rng(0)
    base, new = rng.normal(size=(5, 300)) * 3, rng.normal(size=(5, 300)) * 3
    p, q = _log_softmax(base), _log_softmax(new)
    direct = np.array([sum(np.exp(p[i, v]) * (p[i, v] - q[i, v]) for v in range(300)) for i in range(5)])
    assert np.allclose(kl_full(p, q), direct, atol=1e-10)
    # llama.cpp (tools/perplexity, kl-divergence mode): log-softmax of the base logits with the max
    # subtracted, then sum_v p_base * (logp_base - logp_new) — the same quantity, KL(base || new).
    lc = []
    for i in range(5):
        mb, mn = base[i].max(), new[i].max()
        lse_b, lse_n = np.log(np.exp(base[i] - mb).sum()), np.log(np.exp(new[i] - mn).sum())
        lpb, lpn = base[i] - mb - lse_b, new[i] - mn - lse_n
        lc.append((np.exp(lpb) * (lpb - lpn)).sum())
    assert np.allclose(kl_full(p, q), lc, atol=1e-10)
    assert (kl_full(p, p) < 1e-12).all() and (kl_full(p, q) > 0).all()


def test_top_k_kl_is_a_lower_bound_that_becomes_exact():
    rng = np.random.default_rng(1)
    p, q = _log_softmax(rng.normal(size=(4, 50)) * 2), _log_softmax(rng.normal(size=(4, 50)) * 2)
    full = kl_full(p, q)
    prev = np.zeros(4)
    for k in (1, 4, 16, 50):
        top = [[[int(t), float(p[i, t])] for t in np.argsort(-p[i])[:k]] for i in range(4)]
        approx = kl_topk(top, q)
        assert (approx <= full + 1e-9).all()
        prev = approx
    assert np.allclose(prev, full, atol=1e-9)


def _heldout(tmp_path):
    rows = []
    for i, (q, good, bad) in enumerate(
        [
            ("How do I reset my password?", "Go to Profile > Security and tap Reset Password.", "Unplug the fridge."),
            (
                "How long does the battery last?",
                "About 18 months on one CR2032 coin cell.",
                "Forever, it never runs out.",
            ),
            ("Can I return my hub?", "Yes, within 45 days with the receipt.", "No returns, ever."),
            (
                "How do I pair the hub?",
                "Hold the round button for 5 seconds, then tap Devices > Add Hub.",
                "Shout at it.",
            ),
        ]
    ):
        msgs = [{"role": "user", "content": q}]
        rows += [
            {"id": f"{i}g", "prompt": msgs, "completion": good, "label": True, "reference": [good.split()[0]]},
            {"id": f"{i}b", "prompt": msgs, "completion": bad, "label": False, "reference": [good.split()[0]]},
        ]
    return write_jsonl(tmp_path / "heldout.jsonl", rows)


@pytest.mark.real_model
def test_gate_passes_q8_fails_2bit_and_a_swapped_template_and_device_agrees(tmp_path, smol):
    res = run_export(
        ExportConfig(
            source=str(smol.hf_dir),
            out=str(tmp_path / "b"),
            gguf=["Q8_0", "Q2_K"],
            onnx=False,
            golden_data=str(_heldout(tmp_path)),
            golden_verifier="contains_all",
            golden_max_new_tokens=32,
            # 4 golden prompts cannot rule out a loss smaller than ~49 points (paired.py): this test is
            # about KL, the template and the device's agreement, so task accuracy may lose anything
            thresholds={"task_margin": 1.0},
        ),
        progress=False,
    )
    align = res.manifest["alignment"]
    per = align["per_artifact"]
    assert per["model-q8_0.gguf"]["passed"], per["model-q8_0.gguf"]["failures"]
    assert per["model-q8_0.gguf"]["paired_student"]["n"] == 4 and per["model-q8_0.gguf"]["task_verdict"] == "pass"
    assert not per["model-q2_k.gguf"]["passed"] and not align["passed"]
    assert per["model-q8_0.gguf"]["prompt_ids_match"] == 1.0 and per["model-q8_0.gguf"]["pairs"] == 4
    table, paired = (tmp_path / "b" / "alignment.md").read_text().split("Task accuracy, paired")
    assert table.count("| model-") == 2 and paired.count("| model-") == 2  # one reference: no finishing
    # The gate's greedy answers are what the artifact answers through the runtime's chat(): the
    # pipeline's evaluate stage scores them instead of decoding the eval split again.
    golden = [json.loads(x) for x in (tmp_path / "b" / "golden.jsonl").read_text().splitlines()]
    gate = next(r for r in res.alignment.results if r["artifact"] == "model-q8_0.gguf")
    with load(tmp_path / "b", artifact="model-q8_0.gguf", verify=False) as m:
        chat = [m.chat(g["messages"], max_new_tokens=32, temperature=0.0) for g in golden]
    assert [r["answer"] for r in gate["rows"]] == chat and any(chat)

    # The device re-check (no fp model: top-k KL from golden.jsonl) agrees with the server's.
    dev = {r["artifact"]: r for r in run_device_check(tmp_path / "b")}
    for name, s in per.items():
        d = dev[name]
        assert d["passed"] == s["passed"]
        assert d["top1_agree"] == pytest.approx(s["top1_agree"], abs=1e-9)
        assert d["pref_agree"] == s["pref_agree"] and d["greedy_match"] == s["greedy_match"]
        assert d["kld_mean"] == pytest.approx(s["kld_topk_mean"], abs=1e-6)  # the same top-k quantity on both sides
        assert d["kld_mean"] <= s["kld_mean"] + 1e-9  # a lower bound of the full KL...
        assert d["kld_mean"] >= 0.75 * s["kld_mean"] - 1e-3  # ...and close to it with k = 16 (stated tolerance)

    # A golden set with log-probs on some rows only (export's golden_detail_limit): KL, top-1 and the
    # preference pairs come from those rows, greedy match and task accuracy from every row.
    keep = detail_rows(len(golden), 2)
    assert keep == {0, 2}
    part = [
        g if i in keep else {k: v for k, v in g.items() if k not in ("top_logprobs", "completions")}
        for i, g in enumerate(golden)
    ]
    with load(tmp_path / "b", artifact="model-q8_0.gguf", verify=False) as m:
        full = check_artifact(m, golden, get_verifier("contains_all"), max_new_tokens=32)
        sub = check_artifact(m, part, get_verifier("contains_all"), max_new_tokens=32)
        only = check_artifact(m, [golden[i] for i in sorted(keep)], get_verifier("contains_all"), max_new_tokens=32)
    assert sub["positions"] == only["positions"] == sum(len(golden[i]["greedy_ids"]) for i in keep)
    assert sub["kld_mean"] == only["kld_mean"] and sub["pairs"] == only["pairs"] == 2
    assert sub["task_acc"] == full["task_acc"] and sub["greedy_match"] == full["greedy_match"]
    assert [r["answer"] for r in sub["rows"]] == [r["answer"] for r in full["rows"]]

    # A bundle whose chat template was swapped: same weights, but the device would feed other ids.
    swapped = tmp_path / "swapped"
    shutil.copytree(tmp_path / "b", swapped)
    m = json.loads((swapped / "manifest.json").read_text())
    m["tokenizer"]["chat_template"] = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    )
    (swapped / "manifest.json").write_text(json.dumps(m))
    out = run_check(
        CheckConfig(bundle=str(swapped), reference=str(smol.hf_dir), artifacts=["model-q8_0.gguf"]), progress=False
    )
    assert not out.passed and "chat template / tokenizer" in " ".join(out.results[0]["failures"])


@pytest.mark.integration
def test_golden_detail_rows_are_the_full_rows_and_the_rest_hold_the_greedy_answer(tiny_model_dir, kto_rows):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edge_kto.export.golden import build_golden, read_golden_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = read_golden_prompts(kto_rows, limit=5)
    full = build_golden(model, tok, prompts, max_new_tokens=6, progress=False, batch_size=2, exported=model)
    part = build_golden(
        model, tok, prompts, max_new_tokens=6, progress=False, batch_size=2, exported=model, detail_limit=2
    )
    keep = detail_rows(len(prompts), 2)
    assert len(part) == len(full) == 5 and keep == {0, 2} and detail_rows(5, None) == detail_rows(5, 9) == set(range(5))
    for i, (f, p) in enumerate(zip(full, part)):
        assert p["greedy_ids"] == f["greedy_ids"] and p["greedy_text"] == f["greedy_text"]
        if i in keep:
            for key in ("top_logprobs", "exported_top_logprobs"):  # the same positions, batched with other rows
                a, b = np.array(p[key]), np.array(f[key])
                assert a.shape == b.shape and np.allclose(a, b, atol=1e-4)
            logps = [c["logp"] for c in f["completions"]]
            assert [c["logp"] for c in p["completions"]] == pytest.approx(logps, abs=1e-4)
        else:
            assert not {"top_logprobs", "exported_top_logprobs", "completions"} & set(p)
