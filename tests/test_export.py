"""``edge-kto export`` on a tiny model (real llama.cpp converter + quantizer, real onnxruntime-genai
builder), the parity of what the artifacts compute, atomicity, and SmolLM2 for real."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HELDOUT

from edge_kto.export import ExportConfig, run_export
from edge_kto_runtime.bundle import BundleError, open_bundle

og = pytest.importorskip("onnxruntime_genai")
llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = HELDOUT


def _llama(path: Path, **kw):
    return llama_cpp.Llama(str(path), n_ctx=1024, n_threads=2, verbose=False, **kw)


def _hf_chat_text(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)


@pytest.mark.integration
def test_bundle_manifest_lists_every_file_with_hashes_and_tools(tiny_bundle):
    b = open_bundle(tiny_bundle, verify=True)
    m = b.manifest
    assert [a["quant"] for a in m["artifacts"]] == ["F32", "F16", "Q8_0", "Q4_K_M", "int4-b32-int8head"]
    gg = {a["quant"]: a for a in m["artifacts"] if a["backend"] == "llama.cpp"}
    assert gg["F32"]["bits_per_weight"] == 32.0 and 8 < gg["Q8_0"]["bits_per_weight"] < 9
    assert gg["Q4_K_M"]["k_quant_fallbacks"] > 0  # hidden 64 is not a multiple of 256
    onnx = m["artifacts"][-1]
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= set(onnx["files"])
    assert m["tools"]["llama_cpp_commit"] and m["tools"]["gguf_py"] and m["tools"]["onnxruntime_genai"]
    assert "<|im_start|>" in m["tokenizer"]["chat_template"] and m["tokenizer"]["eos"] == ["<|im_end|>"]
    golden = [json.loads(x) for x in (tiny_bundle / "golden.jsonl").read_text().splitlines()]
    assert len(golden) == len(TEXTS) and m["golden"]["rows"] == len(TEXTS)
    g = golden[0]
    assert len(g["top_logprobs"]) == len(g["greedy_ids"]) and len(g["top_logprobs"][0]) == 16
    assert [c["label"] for c in g["completions"]] == [True, False] and all(c["logp"] < 0 for c in g["completions"])
    assert oct((tiny_bundle / "manifest.json").stat().st_mode & 0o777) == "0o644"


@pytest.mark.integration
def test_llama_cpp_and_onnxruntime_genai_load_and_generate(tiny_bundle, smol_tokenizer):
    prompt = smol_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    for name in ("model-q8_0.gguf", "model-q4_k_m.gguf"):
        llm = _llama(tiny_bundle / name)
        try:
            out = [t for _, t in zip(range(6), llm.generate(prompt, temp=0.0))]
            assert len(out) == 6
        finally:
            llm.close()
    model = og.Model(str(tiny_bundle / "onnx-int4"))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 6, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    new = []
    while not gen.is_done():
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    assert len(new) == 6


@pytest.mark.parametrize("kind", list(TEXTS))
@pytest.mark.integration
def test_chat_prompt_token_ids_agree_across_hf_llama_cpp_and_onnxruntime_genai(tiny_bundle, smol_tokenizer, kind):
    text = _hf_chat_text(smol_tokenizer, TEXTS[kind])
    hf = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(hf) == text
    llm = _llama(tiny_bundle / "model-f32.gguf", vocab_only=True)
    try:
        lc = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        llm.close()
    ort = og.Tokenizer(og.Model(str(tiny_bundle / "onnx-int4"))).encode(text).tolist()
    assert lc == hf, kind
    assert ort == hf, kind


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy()


def _ids(tok, text: str) -> list[int]:
    return tok(_hf_chat_text(tok, text), add_special_tokens=False)["input_ids"]


# Documented tolerances (max |logit difference| over every position; logits are O(1) on the tiny model):
# F32 GGUF and fp32 ONNX compute in fp32 with different kernels -> 1e-3; F16 GGUF rounds weights -> 3e-2.
@pytest.mark.parametrize("artifact, tol", [("model-f32.gguf", 1e-3), ("model-f16.gguf", 3e-2)])
@pytest.mark.integration
def test_gguf_logits_match_transformers_fp32(tiny_bundle, tiny_model_dir, smol_tokenizer, artifact, tol):
    ids = _ids(smol_tokenizer, TEXTS["emoji"])
    ref = _hf_logits(tiny_model_dir, ids)
    llm = _llama(tiny_bundle / artifact, logits_all=True)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    diff = np.abs(got - ref).max()
    assert diff < tol, diff
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory, tiny_model_dir) -> Path:
    from edge_kto.export.onnx import build_onnx

    out = tmp_path_factory.mktemp("onnx32") / "fp32"
    build_onnx(tiny_model_dir, out, precision="fp32")
    return out


@pytest.mark.integration
def test_fp32_onnx_logits_match_transformers_fp32(fp32_onnx, tiny_model_dir, smol_tokenizer):
    ids = _ids(smol_tokenizer, TEXTS["accents"])
    ref = _hf_logits(tiny_model_dir, ids)
    model = og.Model(str(fp32_onnx))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    got = np.asarray(gen.get_output("logits"))[0]
    assert got.shape[-1] == ref.shape[-1]
    last = got[-1] if got.ndim == 2 else got
    assert np.abs(last - ref[-1]).max() < 1e-3


@pytest.mark.integration
def test_greedy_continuations_equal_across_backends(tiny_bundle, fp32_onnx, tiny_model_dir, smol_tokenizer):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    llm = _llama(tiny_bundle / "model-f32.gguf")
    model = og.Model(str(fp32_onnx))
    try:
        for text in ("ascii", "chinese", "emoji"):
            ids = _ids(smol_tokenizer, TEXTS[text])
            with torch.no_grad():
                want = hf.generate(
                    torch.tensor([ids]), do_sample=False, max_new_tokens=12, min_new_tokens=12, pad_token_id=0
                )[0, len(ids) :].tolist()
            llm.reset()
            got_lc = [t for _, t in zip(range(12), llm.generate(ids, temp=0.0, reset=True))]
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + 12, min_length=len(ids) + 12, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(ids)
            got_ort = []
            while not gen.is_done():
                gen.generate_next_token()
                got_ort.append(int(gen.get_next_tokens()[0]))
            assert got_lc == want, text
            assert got_ort == want, text
    finally:
        llm.close()


@pytest.mark.integration
def test_failure_mid_export_leaves_nothing_and_existing_bundle_needs_force(tmp_path, tiny_model_dir, monkeypatch):
    import edge_kto.export.recipe as recipe

    def broken(self):
        raise RuntimeError("simulated builder crash")

    monkeypatch.setattr(recipe.OnnxBuild, "wait", broken)  # the builder child is killed by close()
    with pytest.raises(RuntimeError, match="simulated builder crash"):
        run_export(ExportConfig(source=str(tiny_model_dir), out=str(tmp_path / "b"), gguf=["Q8_0"]), progress=False)
    assert list(tmp_path.iterdir()) == [], "no half bundle and no temporary folder left behind"

    cfg = ExportConfig(source=str(tiny_model_dir), out=str(tmp_path / "b"), gguf=["Q8_0"], onnx=False, zip=True)
    first = run_export(cfg, progress=False)
    assert zipfile.is_zipfile(first.zip_path)
    assert open_bundle(first.zip_path, extract_to=tmp_path / "unzipped").manifest["artifacts"][0]["quant"] == "Q8_0"
    with pytest.raises(FileExistsError, match="--force"):
        run_export(cfg, progress=False)
    cfg.force, cfg.gguf = True, ["Q4_0"]
    second = run_export(cfg, progress=False)
    assert [a["quant"] for a in open_bundle(second.bundle).manifest["artifacts"]] == ["Q4_0"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.integration
def test_tampered_bundle_is_refused(tmp_path, tiny_bundle):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    with open(b / "model-q8_0.gguf", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(b)
    open_bundle(b, verify="model-q4_k_m.gguf")  # the other artifacts still load on their own


@pytest.mark.real_model
def test_smollm2_exports_to_every_type_and_each_generates(tmp_path, smol):
    res = run_export(
        ExportConfig(source=str(smol.hf_dir), out=str(tmp_path / "smol"), gguf=["Q4_K_M", "Q4_0", "Q8_0"]),
        progress=False,
    )
    b = open_bundle(res.bundle)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol.hf_dir)
    ids = _ids(tok, "What is the capital of Japan? Answer in one word.")
    for art in b.artifacts:
        if art.backend == "llama.cpp":
            llm = _llama(res.bundle / art.path)
            try:
                out = [t for t, _ in zip(llm.generate(ids, temp=0.0), range(8))]
            finally:
                llm.close()
        else:
            model = og.Model(str(res.bundle / art.path))
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=len(ids) + 8, do_sample=False)
            gen = og.Generator(model, params)
            gen.append_tokens(ids)
            out = []
            while not gen.is_done():
                gen.generate_next_token()
                out.append(int(gen.get_next_tokens()[0]))
        text = tok.decode(out)
        assert "Tokyo" in text, (art.path, text)
    sizes = {a.quant: a.entry["bytes"] for a in b.artifacts}
    assert sizes["Q4_0"] < sizes["Q8_0"] and sizes["Q4_K_M"] < sizes["Q8_0"]


@pytest.mark.integration
def test_golden_rows_equal_unbatched_fp_computation(tiny_bundle, tiny_model_dir):
    """Batched (left-padded) greedy + top-k + summed log-probs == one prompt at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rows = [json.loads(x) for x in (tiny_bundle / "golden.jsonl").read_text().splitlines()]
    for row in rows[:3]:
        p = row["prompt_ids"]
        with torch.no_grad():
            want = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=8, pad_token_id=0)[
                0, len(p) :
            ].tolist()
            assert row["greedy_ids"] == want[: len(row["greedy_ids"])]
            full = torch.tensor([p + row["greedy_ids"]])
            logp = torch.log_softmax(model(full).logits[0, len(p) - 1 : -1], -1)
            top1 = [[int(logp[i].argmax()), float(logp[i].max())] for i in range(len(row["greedy_ids"]))]
            assert [t[0][0] for t in row["top_logprobs"]] == [t[0] for t in top1]
            assert np.allclose([t[0][1] for t in row["top_logprobs"]], [t[1] for t in top1], atol=1e-4)
            for c in row["completions"]:
                lp = torch.log_softmax(model(torch.tensor([p + c["ids"]])).logits[0, len(p) - 1 : -1], -1)
                assert c["logp"] == pytest.approx(float(lp.gather(1, torch.tensor(c["ids"])[:, None]).sum()), abs=1e-3)


@pytest.mark.integration
def test_an_onnx_precision_is_a_candidate_option_int8_builds_and_tracks_fp32(tiny_model_dir, tmp_path):
    """Adding an ONNX variant touches no code: `precision: int8` is one more candidate option."""
    import numpy as np

    from edge_kto_runtime import load

    res = run_export(
        ExportConfig(
            source=str(tiny_model_dir),
            out=str(tmp_path / "b"),
            gguf=[],
            onnx=[{"precision": "int8"}, {"precision": "fp32"}],
            check=False,
        ),
        progress=False,
    )
    assert {a["path"]: a["quant"] for a in res.manifest["artifacts"]} == {"onnx-int8/": "int8", "onnx-fp32/": "fp32"}
    rows = {}
    for art in ("onnx-int8/", "onnx-fp32/"):
        with load(tmp_path / "b", artifact=art) as m:
            ids = m.tokenize("the hub light blinks blue when the battery is low")
            rows[art] = m.logprobs(ids, list(range(len(ids))))
    a, b = rows["onnx-int8/"], rows["onnx-fp32/"]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99 and (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8
    with pytest.raises(ValueError, match="precision must be one of"):
        run_export(
            ExportConfig(source=str(tiny_model_dir), out=str(tmp_path / "c"), gguf=[], onnx={"precision": "int2"}),
            progress=False,
        )
