"""4-bit artifacts that keep what training taught: quantization-aware finishing, exact export,
importance matrices, per-tensor types, hard pairs and smallest-passing selection.

The round trip is checked against the real tools: llama.cpp's converter + ``llama_model_quantize``
(read back with gguf-py) and the onnxruntime-genai builder (MatMulNBits initializers read back
with onnx), on a tiny random Llama that uses SmolLM2's tokenizer.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import heldout_rows

from edge_kto.export import ExportConfig, run_export
from edge_kto.export.candidates import CandidateError, parse_gguf, parse_onnx
from edge_kto.export.golden import near_miss
from edge_kto.export.llamacpp import convert_hf_to_gguf, quantize_gguf
from edge_kto.export.select import choose
from edge_kto.finish import FinishConfig, check_on_grid, run_finish
from edge_kto.quant.fake import fake_quantize, q4_0_dequantized
from edge_kto.quant.imatrix import ImatrixError, compute_imatrix, read_imatrix, write_imatrix

LINEARS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _finished_weights(finished: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(finished / "model" / "model.safetensors"))


def test_fake_quant_is_llama_cpp_q4_0_arithmetic():
    # A block whose max |w| is negative, a tie on |max| (the first sets the scale), an all-zero block.
    w = torch.zeros(3, 32)
    w[0] = torch.linspace(-1.0, 0.7, 32)
    w[1, 0], w[1, 1], w[1, 2:] = 0.5, -0.5, 0.125
    q = q4_0_dequantized(w)
    d0 = torch.tensor(-1.0 / -8.0).half().float()
    assert q[0, 0] == -8 * d0 and torch.all(q[2] == 0)
    # |0.5| == |-0.5|: the first sets the scale (d = -1/16), so -0.5 maps to code 16 and clips to 7.
    assert q[1, 0] == 0.5 and q[1, 1] == -0.4375
    assert torch.equal(q4_0_dequantized(q), q)  # the grid is a fixed point
    x = torch.randn(4, 64, requires_grad=True)
    fake_quantize(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through


def test_q8_0_activation_rounding_as_llama_cpp():
    from edge_kto.quant.fake import q8_0_activations

    x = torch.tensor([[0.0] * 31 + [1.27] + [0.5] * 32], requires_grad=True)
    y = q8_0_activations(x)
    d1 = torch.tensor(1.27 / 127).half().float()  # per 32-block: d = amax / 127, stored fp16
    assert torch.allclose(y[0, 31], 127 * d1) and torch.allclose(y[0, 32], 127 * torch.tensor(0.5 / 127).half().float())
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    with pytest.raises(ValueError, match="activations: one of"):
        FinishConfig(source="s", data="d", out="o", activations="int8").validate()


@pytest.mark.integration
def test_finished_model_lies_on_the_grid(finished):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(finished / "model"), dtype=torch.float32)
    assert check_on_grid(model) == []
    rep = json.loads((finished / "finish_report.json").read_text())
    assert rep["format"] == "q4_0" and rep["steps"] == 4 and rep["linears"] == 14


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's q/k row permutation (LlamaModel.permute)."""
    r, c = w.shape
    return w.reshape(n_head, r // n_head // 2, 2, c).swapaxes(1, 2).reshape(r, c)


@pytest.mark.integration
def test_gguf_q4_0_reproduces_finished_weights_exactly(finished, finished_bundle):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    cfg = json.loads((finished / "model" / "config.json").read_text())
    hf = _finished_weights(finished)
    r = GGUFReader(str(finished_bundle / "model-q4_0.gguf"))
    seen = 0
    for t in r.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[2] not in LINEARS:
            continue
        assert t.tensor_type.name == "Q4_0", t.name
        w = dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
        if parts[2] == "attn_q":
            w = _unpermute(w, cfg["num_attention_heads"])
        elif parts[2] == "attn_k":
            w = _unpermute(w, cfg["num_key_value_heads"])
        ref = hf[f"model.layers.{parts[1]}.{LINEARS[parts[2]]}.weight"].numpy()
        assert np.abs(w - ref).max() == 0.0, t.name
        seen += 1
    assert seen == 14
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["token_embd.weight"] == "Q8_0"


def _onnx_initializers(model_dir: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model_dir / "model.onnx"))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _unpack_int4(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.stack([(q & 0xF), (q >> 4)], -1).reshape(q.shape[0], q.shape[1], -1).astype(np.float32)
    return ((codes - 8) * scales.reshape(q.shape[0], q.shape[1], 1)).reshape(q.shape[0], -1)


@pytest.mark.integration
def test_onnx_int4_reproduces_finished_weights_exactly(finished, finished_bundle):
    hf = _finished_weights(finished)
    inits = _onnx_initializers(finished_bundle / "onnx-int4-acc1-headacc1")
    for layer in range(2):
        pre = f"model.layers.{layer}"
        qkv = _unpack_int4(
            inits[f"{pre}.attn.qkv_proj.MatMul.weight_Q4"], inits[f"{pre}.attn.qkv_proj.MatMul.weight_scales"]
        )
        want = np.concatenate([hf[f"{pre}.self_attn.{p}_proj.weight"].numpy() for p in "qkv"])
        assert np.abs(qkv - want).max() == 0.0
        for onnx_name, hf_name in (
            ("attn.o_proj", "self_attn.o_proj"),
            ("mlp.gate_proj", "mlp.gate_proj"),
            ("mlp.up_proj", "mlp.up_proj"),
            ("mlp.down_proj", "mlp.down_proj"),
        ):
            got = _unpack_int4(
                inits[f"{pre}.{onnx_name}.MatMul.weight_Q4"], inits[f"{pre}.{onnx_name}.MatMul.weight_scales"]
            )
            assert np.abs(got - hf[f"{pre}.{hf_name}.weight"].numpy()).max() == 0.0, onnx_name


@pytest.mark.integration
def test_onnx_with_fp32_embeddings_is_the_finished_models_own_forward(finished, finished_bundle):
    """``fp32_embeddings``: the tied table is stored once, unquantized, for the input Gather and the head, so at
    accuracy_level=1 onnxruntime-genai computes the finished model's torch forward as it is (no
    substituted embedding or head): log-probs within 1e-3."""
    from transformers import AutoModelForCausalLM

    from edge_kto_runtime import load

    inits = _onnx_initializers(finished_bundle / "onnx-int4-acc1-fp32emb")
    assert not any(k.startswith(("lm_head.MatMul.weight_Q", "model.embed_tokens.weight_Q")) for k in inits)
    model = AutoModelForCausalLM.from_pretrained(str(finished / "model"), dtype=torch.float32).eval()
    golden = [json.loads(x) for x in (finished_bundle / "golden.jsonl").read_text().splitlines()]
    with load(finished_bundle, artifact="onnx-int4-acc1-fp32emb/", verify=False) as m:
        for row in golden[:4]:
            ids = row["prompt_ids"] + row["greedy_ids"]
            pos = list(range(len(row["prompt_ids"]) - 1, len(ids) - 1))
            with torch.no_grad():
                ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, pos].double(), -1).numpy()
            assert np.abs(m.logprobs(ids, pos) - ref).max() < 1e-3


@pytest.mark.integration
def test_onnx_fp32_activations_match_the_fake_quant_forward(finished, finished_bundle):
    """accuracy_level=1: with the embedding and LM head set to what the builder stored, the torch
    forward of the finished model and onnxruntime-genai agree within 1e-3 (log-probs)."""
    from transformers import AutoModelForCausalLM

    from edge_kto_runtime import load

    inits = _onnx_initializers(finished_bundle / "onnx-int4-acc1-headacc1")
    q4, s4 = inits["model.embed_tokens.weight_Q4"].astype(np.float32), inits["model.embed_tokens.weight_scales"]
    emb = (q4.reshape(q4.shape[0], -1, 32) * s4[..., None]).reshape(q4.shape[0], -1)
    q8, s8 = inits["lm_head.MatMul.weight_Q8"], inits["lm_head.MatMul.weight_scales"]
    head = ((q8.astype(np.float32) - 128) * s8[..., None]).reshape(q8.shape[0], -1)
    model = AutoModelForCausalLM.from_pretrained(str(finished / "model"), dtype=torch.float32).eval()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.from_numpy(head))
    model.model.embed_tokens.weight = torch.nn.Parameter(torch.from_numpy(emb))
    golden = [json.loads(x) for x in (finished_bundle / "golden.jsonl").read_text().splitlines()]
    with load(finished_bundle, artifact="onnx-int4-acc1-headacc1/", verify=False) as m:
        for row in golden[:4]:
            ids = row["prompt_ids"] + row["greedy_ids"]
            pos = list(range(len(row["prompt_ids"]) - 1, len(ids) - 1))
            ort = m.logprobs(ids, pos)
            with torch.no_grad():
                ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, pos].double(), -1).numpy()
            assert np.abs(ort - ref).max() < 1e-3


@pytest.mark.integration
def test_imatrix_round_trip_and_refusals(tmp_path, tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    seqs = [smol_tokenizer(t)["input_ids"] for t in ("Reset the hub: hold the button 10 seconds.", "Pair the app.")]
    im = compute_imatrix(model, seqs, progress=False, dataset="unit")
    assert len(im.sums) == 14 and im.tokens == sum(len(s) for s in seqs)
    # The first layer's q input is the normed embedding: recompute its per-column sum of x² by hand.
    with torch.no_grad():
        h = torch.cat(
            [model.model.layers[0].input_layernorm(model.model.embed_tokens(torch.tensor([q])))[0] for q in seqs]
        )
    np.testing.assert_allclose(im.sums["blk.0.attn_q.weight"], (h.double() ** 2).sum(0).numpy(), rtol=1e-5)
    assert im.counts["blk.0.attn_q.weight"] == h.shape[0]
    path = write_imatrix(im, tmp_path / "im.gguf")
    back = read_imatrix(path)
    assert set(back.sums) == set(im.sums) and back.counts == im.counts and back.datasets == ["unit"]
    for k in im.sums:
        np.testing.assert_allclose(back.sums[k], im.sums[k].astype(np.float32))
    back.check_shapes({k: v.size for k, v in im.sums.items()})
    with pytest.raises(ImatrixError, match=r"blk\.0\.attn_q\.weight: 64 values, the model's tensor has 576"):
        back.check_shapes({"blk.0.attn_q.weight": 576})
    with pytest.raises(ImatrixError, match="none of its"):
        back.check_shapes({"other.weight": 64})
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ImatrixError, match="junk.gguf: not a GGUF importance matrix"):
        read_imatrix(tmp_path / "junk.gguf")


@pytest.mark.integration
def test_imatrix_and_tensor_overrides_reach_llama_cpp(tmp_path, tiny_model_dir, smol_tokenizer):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    base = tmp_path / "f32.gguf"
    convert_hf_to_gguf(tiny_model_dir, base, "f32")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    im = compute_imatrix(model, [smol_tokenizer("hello world, how are you")["input_ids"]], progress=False)
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "imat.gguf"
    quantize_gguf(base, plain, "Q4_0", pure=True)
    quantize_gguf(base, weighted, "Q4_0", pure=True, imatrix=im.means(), tensor_types={"ffn_down": "Q8_0"})
    a = {t.name: t for t in GGUFReader(str(plain)).tensors}
    b = {t.name: t for t in GGUFReader(str(weighted)).tensors}
    assert (
        b["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0" and a["blk.0.ffn_down.weight"].tensor_type.name == "Q4_0"
    )
    assert b["blk.0.attn_q.weight"].tensor_type.name == "Q4_0"
    assert not np.array_equal(
        a["blk.0.attn_q.weight"].data, b["blk.0.attn_q.weight"].data
    )  # the imatrix changed the rounding
    with pytest.raises(ValueError, match=r"regex 'ffn_dwn' matches no tensor"):
        quantize_gguf(base, tmp_path / "x.gguf", "Q4_0", tensor_types={"ffn_dwn": "Q8_0"})


def test_candidate_specs_refused_with_names():
    assert parse_gguf("q4_k_m").path == "model-q4_k_m.gguf"
    c = parse_gguf({"type": "IQ4_NL", "imatrix": True, "tensor_types": {"ffn_down": "q6_k"}})
    assert c.path == "model-iq4_nl-imat-mix.gguf" and c.tensor_types == {"ffn_down": "Q6_K"}
    with pytest.raises(CandidateError, match="'Q4_XX': unknown type"):
        parse_gguf("Q4_XX")
    with pytest.raises(CandidateError, match=r"tensor_types\['ffn_down'\] = 'Q9_9' is not a GGML type"):
        parse_gguf({"type": "Q4_0", "tensor_types": {"ffn_down": "Q9_9"}})
    with pytest.raises(CandidateError, match=r"regex '\(' is invalid"):
        parse_gguf({"type": "Q4_0", "tensor_types": {"(": "Q8_0"}})
    with pytest.raises(CandidateError, match=r"unknown option\(s\) \['imatrx'\]"):
        parse_gguf({"type": "Q4_0", "imatrx": True})
    assert [o.path for o in parse_onnx([{}, {"accuracy_level": 1}])] == ["onnx-int4/", "onnx-int4-acc1/"]
    exact = parse_onnx({"accuracy_level": 1, "head_accuracy_level": 1})[0]
    assert exact.path == "onnx-int4-acc1-headacc1/" and exact.quant == "int4-b32-int8head-acc1-headacc1"
    fp32 = parse_onnx({"fp32_embeddings": True})[0]
    assert fp32.path == "onnx-int4-fp32emb/" and fp32.quant == "int4-b32-fp32emb" and fp32.head_level is None
    with pytest.raises(CandidateError, match="fp32_embeddings applies to int4 builds"):
        parse_onnx({"fp32_embeddings": True, "precision": "int8"})
    with pytest.raises(CandidateError, match="head_accuracy_level must be 0-4"):
        parse_onnx({"head_accuracy_level": 5})
    with pytest.raises(CandidateError, match="accuracy_level must be 0-4"):
        parse_onnx({"accuracy_level": 7})
    with pytest.raises(CandidateError, match="same artifact"):
        ExportConfig(source="x", out="y", gguf=["Q4_0", "q4_0"]).candidates()


def test_near_miss_breaks_exactly_one_fact():
    from edge_kto_runtime.verifiers import contains_all

    ref = ["10 seconds", "Settings > Hub"]
    text = "Open Settings > Hub and hold the button for 10 seconds."
    miss = near_miss(text, ref)
    assert miss == "Open Settings > Hub and hold the button for 11 seconds."
    assert contains_all(text, ref) and not contains_all(miss, ref)
    assert near_miss("Open Settings > Hub now.", ["Settings > Hub"]) == "Open now."
    assert near_miss("nothing relevant", ref) is None


def test_choose_keeps_smallest_passing_else_best_failing():
    arts = [
        {"path": "a.gguf", "backend": "llama.cpp", "bytes": 300},
        {"path": "b.gguf", "backend": "llama.cpp", "bytes": 100},
        {"path": "c.gguf", "backend": "llama.cpp", "bytes": 200},
        {"path": "o1/", "backend": "onnxruntime-genai", "bytes": 50},
        {"path": "o2/", "backend": "onnxruntime-genai", "bytes": 80},
    ]
    per = {
        "a.gguf": {"passed": True},
        "b.gguf": {"passed": False},
        "c.gguf": {"passed": True},
        "o1/": {"passed": False, "task_retention": 0.5, "kld_mean": 0.3},
        "o2/": {"passed": False, "task_retention": 0.9, "kld_mean": 0.4},
    }
    assert [a["path"] for a in choose(arts, per)] == ["c.gguf", "o2/"]


@pytest.mark.integration
def test_export_selects_smallest_passing_and_reports_when_none_passes(tmp_path, tiny_model_dir, kto_rows):
    common = dict(
        source=str(tiny_model_dir),
        gguf=["F16", "Q8_0", "Q4_0"],
        onnx=False,
        golden_data=str(kto_rows),
        golden_max_new_tokens=8,
        golden_limit=4,
        select="smallest-passing",
    )
    # Q4_0 of a random tiny model drifts far; Q8_0 and F16 stay close: the smallest of those two is kept.
    res = run_export(
        ExportConfig(
            out=str(tmp_path / "b1"),
            thresholds={"kld_mean_max": 0.02, "top1_min": 0.5, "pref_agree_min": 0.0},
            **common,
        ),
        progress=False,
    )
    sel = res.manifest["selection"]
    per = {c["path"]: c for c in sel["candidates"]}
    passing = sorted((c for c in sel["candidates"] if c["passed"]), key=lambda c: c["order"])  # the order tried
    assert passing and sel["chosen"] == [passing[0]["path"]] and len(sel["candidates"]) == 3
    tried = sorted(sel["candidates"], key=lambda c: c["order"])  # by size; within 1% the faster decode first
    assert all(a["bytes"] <= b["bytes"] * 1.01 for a, b in zip(tried, tried[1:]))
    assert [a["path"] for a in res.manifest["artifacts"]] == sel["chosen"]
    assert {p.name for p in res.bundle.iterdir() if p.suffix == ".gguf"} == set(sel["chosen"])
    assert res.alignment.passed and res.manifest["alignment"]["passed"] is True
    assert all(per[p]["kld_mean"] is not None for p in per)
    assert "Selection: per format, the first passing artifact by size" in (res.bundle / "alignment.md").read_text()
    # Impossible thresholds: nothing passes -> the bundle says so (passed: false), the CLI exits 3.
    res2 = run_export(
        ExportConfig(out=str(tmp_path / "b2"), thresholds={"kld_mean_max": -1.0}, **common), progress=False
    )
    assert not res2.alignment.passed and res2.manifest["alignment"]["passed"] is False
    assert len(res2.manifest["artifacts"]) == 1
    assert "No candidate passed the gate" in (res2.bundle / "alignment.md").read_text()
    # A failing export never replaces a good bundle: it is left beside it as NAME.failed.
    res3 = run_export(
        ExportConfig(out=str(tmp_path / "b1"), force=True, thresholds={"kld_mean_max": -1.0}, **common), progress=False
    )
    assert res3.bundle == tmp_path / "b1.failed" and (tmp_path / "b1" / "manifest.json").is_file()
    assert json.loads((tmp_path / "b1" / "manifest.json").read_text())["alignment"]["passed"] is True


@pytest.mark.integration
def test_finish_resumes_after_kill(tmp_path, tiny_model_dir, kto_rows):
    def cmd(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "edge_kto.cli",
            "finish",
            str(tiny_model_dir),
            "--data",
            str(kto_rows),
            "--out",
            str(out),
            "--steps",
            "40",
            "--batch-size",
            "4",
            "--save-steps",
            "3",
            "--lr",
            "1e-3",
            "--quiet",
        ]

    p = subprocess.Popen(cmd(tmp_path / "killed"))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "killed" / "checkpoints" / "step-6").is_dir():
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed" / "finish_report.json").exists()
    subprocess.run(cmd(tmp_path / "killed"), check=True)
    subprocess.run(cmd(tmp_path / "straight"), check=True)
    rep = json.loads((tmp_path / "killed" / "finish_report.json").read_text())
    assert rep["resumed_from"] is not None and rep["resumed_from"] % 3 == 0 and 6 <= rep["resumed_from"] < 40
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    a, b = _finished_weights(tmp_path / "killed"), _finished_weights(tmp_path / "straight")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    # A checkpoint is only resumed by the same job: other settings are refused, naming what changed.
    other = tmp_path / "other"
    (other / "checkpoints" / "step-3").mkdir(parents=True)
    torch.save({"step": 3}, other / "checkpoints" / "step-3" / "state.pt")
    (other / "job.json").write_text(json.dumps({"settings": {"lr": 0.5, "steps": 40}}))
    with pytest.raises(ValueError, match="different job.*Changed: lr"):
        run_finish(
            FinishConfig(
                source=str(tiny_model_dir), data=str(kto_rows), out=str(other), steps=40, lr=1e-3, batch_size=4
            ),
            progress=False,
        )


@pytest.mark.integration
def test_on_policy_finishing_adds_the_fp_students_own_answers_as_kl_rows(tmp_path, tiny_model_dir, kto_rows, finished):
    out = tmp_path / "op"
    res = run_finish(
        FinishConfig(
            source=str(tiny_model_dir),
            data=str(kto_rows),
            out=str(out),
            steps=2,
            batch_size=4,
            on_policy=True,
            on_policy_max_new_tokens=6,
        ),
        progress=False,
    )
    cached = [json.loads(x) for x in (out / "on_policy.jsonl").read_text().split("\n") if x.strip()]
    n_prompts = len({json.dumps(r["prompt"]) for r in heldout_rows()})  # the longest does not fit max_length
    assert n_prompts - 1 <= len(cached) <= n_prompts and all(0 < len(r["completion_ids"]) <= 6 for r in cached)
    teacher_rows = json.loads((finished / "config.json").read_text())["rows"]
    assert json.loads((out / "config.json").read_text())["rows"] == teacher_rows + len(cached)
    assert res.steps == 2


@pytest.mark.integration
def test_mixed_finishing_keeps_sensitive_projections_8bit_and_the_rest_exact(tmp_path, tiny_model_dir, kto_rows):
    """finish --mixed: q/k/v/down of the sensitive layers train unquantized and ship as Q8_0 / int8;
    the export picks that up from the finish report, and every 4-bit tensor is still exact."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    fin = tmp_path / "mixed"
    run_finish(
        FinishConfig(
            source=str(tiny_model_dir), data=str(kto_rows), out=str(fin), steps=2, batch_size=4, lr=1e-3, mixed=True
        ),
        progress=False,
    )
    rep = json.loads((fin / "finish_report.json").read_text())
    assert rep["mixed_8bit"]["layers"] == [0] and rep["linears"] == 10  # of 2 layers, layer 0's q/k/v/down stay 8-bit
    b = run_export(
        ExportConfig(
            source=str(fin),
            out=str(tmp_path / "b"),
            gguf=["Q4_0"],
            onnx=[{"accuracy_level": 1}],
            golden_data=str(kto_rows),
            golden_max_new_tokens=4,
            check=False,
        ),
        progress=False,
    ).bundle
    hf = _finished_weights(fin)
    cfg = json.loads((fin / "model" / "config.json").read_text())
    heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
    types = {}
    for t in GGUFReader(str(b / "model-q4_0-mix.gguf")).tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[2] not in LINEARS:
            continue
        types[parts[1], parts[2]] = t.tensor_type.name
        if t.tensor_type.name == "Q4_0":
            w = dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
            w = _unpermute(w, heads[parts[2]]) if parts[2] in heads else w
            assert np.abs(w - hf[f"model.layers.{parts[1]}.{LINEARS[parts[2]]}.weight"].numpy()).max() == 0.0, t.name
    eight = {"attn_q", "attn_k", "attn_v", "ffn_down"}
    assert types == {(str(i), n): "Q8_0" if i == 0 and n in eight else "Q4_0" for i in range(2) for n in LINEARS}
    inits = _onnx_initializers(b / "onnx-int4-acc1-int8layers")
    got = _unpack_int4(
        inits["model.layers.0.mlp.up_proj.MatMul.weight_Q4"], inits["model.layers.0.mlp.up_proj.MatMul.weight_scales"]
    )
    assert np.abs(got - hf["model.layers.0.mlp.up_proj.weight"].numpy()).max() == 0.0
    assert "model.layers.0.mlp.down_proj.MatMul.weight_Q4" not in inits  # int8, not int4
    # The default head level: the int8 LM head at accuracy_level 4 (onnxruntime has no fast fp32-compute
    # kernel for 8-bit weights), every other MatMulNBits at the candidate's level 1.
    levels = _matmulnbits_levels(b / "onnx-int4-acc1-int8layers")
    assert levels.pop("/lm_head/MatMul_Q8") == 4 and set(levels.values()) == {1}
    recipe = {a["path"]: a["recipe"] for a in json.loads((b / "manifest.json").read_text())["artifacts"]}
    assert recipe["onnx-int4-acc1-int8layers/"]["head_accuracy_level"] == 4


def _matmulnbits_levels(model_dir: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    return {
        n.name: next(a.i for a in n.attribute if a.name == "accuracy_level")
        for n in m.graph.node
        if n.op_type == "MatMulNBits"
    }


def test_export_config_yaml_maps_onto_export_config(tmp_path):
    from edge_kto.cli import _export_yaml

    good = tmp_path / "export.yaml"
    good.write_text(
        "export: {gguf: [Q4_0, {type: IQ4_NL, imatrix: true}], onnx: [{accuracy_level: 1}], "
        "select: smallest-passing, golden_limit: 80}\n"
    )
    d = _export_yaml(str(good))
    cfg = ExportConfig(source="s", out="o", **d)
    gg, ox = cfg.candidates()
    assert [c.path for c in gg] == ["model-q4_0.gguf", "model-iq4_nl-imat.gguf"] and cfg.imatrix == "auto"
    assert [c.path for c in ox] == ["onnx-int4-acc1/"] and cfg.golden_limit == 80
    bad = tmp_path / "bad.yaml"
    bad.write_text("export: {ggfu: [Q4_0]}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown export option\(s\) \['ggfu'\]"):
        _export_yaml(str(bad))


@pytest.mark.integration
def test_gate_measures_a_finished_student_against_its_own_weights(finished, finished_bundle, tiny_model_dir):
    """A finished student's artifacts store the finished weights: KL/top-1 compare with those (the
    export and runtime's error), task and preferences with the fp student, and the distance that
    finishing itself put between the two is reported (``kld_student_mean``), on the server and on a device."""
    from transformers import AutoModelForCausalLM

    from edge_kto.check import CheckConfig, run_check
    from edge_kto_runtime.check import run_device_check

    m = json.loads((finished_bundle / "manifest.json").read_text())
    assert m["golden"]["kl_reference"] == "finished"
    golden = [json.loads(x) for x in (finished_bundle / "golden.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(str(finished / "model"), dtype=torch.float32).eval()
    row = golden[0]
    ids = row["prompt_ids"] + row["greedy_ids"]
    pos = list(range(len(row["prompt_ids"]) - 1, len(ids) - 1))
    with torch.no_grad():
        top = torch.log_softmax(model(torch.tensor([ids])).logits[0, pos], -1).topk(16, -1)
    assert [[t for t, _ in r] for r in row["exported_top_logprobs"]] == top.indices.tolist()
    assert [[t for t, _ in r] for r in row["top_logprobs"]] != top.indices.tolist()  # finishing moved the model
    # the stored weights' own greedy answer (the gate's paired reference for the export's loss) is what
    # transformers' generate gives for the finished model
    with torch.no_grad():
        gen = model.generate(torch.tensor([row["prompt_ids"]]), do_sample=False, max_new_tokens=8)
    assert row["exported_greedy_ids"] == gen[0, len(row["prompt_ids"]) :].tolist()[: len(row["exported_greedy_ids"])]

    art = "onnx-int4-acc1-headacc1/"  # computes like torch: only the embedding/head storage differs
    server = run_check(
        CheckConfig(bundle=str(finished_bundle), reference=str(tiny_model_dir), exported=str(finished), write=False),
        progress=False,
    ).results
    device = run_device_check(finished_bundle, n_threads=2)
    for r in server + device:
        assert r["kl_reference"] == "finished"
    s_onnx = next(r for r in server if r["artifact"] == art)
    assert s_onnx["kl_source"] == "full" and s_onnx["kld_mean"] < 1e-3 < s_onnx["kld_student_mean"]
    for s, d in zip(server, device):  # the device's top-k KL is a lower bound of the server's full KL
        assert d["kl_source"] == "top-k" and d["kld_mean"] <= s["kld_mean"] + 1e-9
        assert d["kld_student_mean"] <= s["kld_student_mean"] + 1e-9
        assert d["task_acc_fp"] == s["task_acc_fp"] and d["pref_agree"] == s["pref_agree"]
