"""``greedy_decode`` (rows leave the batch at their EOS) against transformers' own greedy ``generate``,
and the training precision rule (``edge_kto.precision``)."""

from __future__ import annotations

import pytest
import torch

from edge_kto.models.greedy import greedy_decode
from edge_kto.precision import autocast, cpu_has_native_bf16, resolve_precision
from edge_kto_runtime.errors import InvalidInput

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have? Answer with a number only.",
    "Write one word that rhymes with cat.",
    "Say hello in Spanish.",
    "What is two plus three?",
]


@pytest.fixture(scope="module")
def smol_model(smol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol.hf_dir)
    return AutoModelForCausalLM.from_pretrained(smol.hf_dir, dtype=torch.float32).eval(), tok


def _prompts(tok) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    rendered = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in rendered]


@pytest.mark.real_model
def test_greedy_decode_equals_generate_and_does_not_depend_on_the_batch(smol_model):
    model, tok = smol_model
    prompts, eos = _prompts(tok), {tok.eos_token_id}
    alone = greedy_decode(model, prompts, 24, tok.eos_token_id, eos, batch_size=1)
    for p, got in zip(prompts, alone):  # one prompt, no padding: transformers' greedy generate, token for token
        ref = model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=24, pad_token_id=tok.eos_token_id)
        ref = ref[0, len(p) :].tolist()
        assert got == ref[: next((k + 1 for k, t in enumerate(ref) if t in eos), len(ref))]
    assert any(r[-1] in eos for r in alone) and any(len(r) == 24 for r in alone)  # both ways of ending occur
    batched = greedy_decode(model, prompts, 24, tok.eos_token_id, eos, batch_size=4)  # rows of unequal length
    assert batched == alone
    assert greedy_decode(model, prompts[:2], 0, tok.eos_token_id, eos) == [[], []]


def test_precision_auto_follows_the_hardware_and_bad_values_are_named(monkeypatch):
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    expected = "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto") == expected
    with pytest.raises(InvalidInput, match="precision: one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16")
    with autocast("bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_pipeline_keys_record_the_resolved_precision(tmp_path):
    """``auto`` is resolved before hashing: the key of an auto run is the key of the explicit value."""
    from pathlib import Path

    from edge_kto.pipeline import PipelineConfig
    from edge_kto.pipeline.runner import plan_keys

    task = Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals"

    def keys(train: str, finish: str) -> dict[str, str]:
        p = tmp_path / "p.yaml"
        p.write_text(f"task: {task}\ntrain: {{precision: {train}}}\nfinish: {{precision: {finish}}}\n")
        return plan_keys(PipelineConfig.from_yaml(p))

    here = resolve_precision("auto")
    other = "fp32" if here == "bf16" else "bf16"
    auto, explicit, changed = keys("auto", "auto"), keys(here, here), keys(other, here)
    assert auto == explicit
    assert auto["train"] != changed["train"] and auto["label"] == changed["label"]
    assert keys(here, other)["finish"] != auto["finish"] and keys(here, other)["train"] == auto["train"]


@pytest.mark.real_model
def test_student_before_is_scored_on_label_evals_greedy_answers(tmp_path, smol):
    """With ``eval_student_temperature: 0`` label_eval holds the untrained student's greedy answers;
    evaluate scores them as "student before", and they equal a fresh greedy decode of the eval split."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from edge_kto.data import read_task, to_messages
    from edge_kto.evaluate import eval_teacher
    from edge_kto.label import LabelConfig, OnPolicyConfig, run_label
    from edge_kto.pipeline.stages import _student_before_from_label_eval
    from edge_kto.teacher.base import SamplingParams, TeacherConfig

    task = read_task(Path(__file__).resolve().parent.parent / "edge_kto" / "tasks" / "capitals")
    cands = tmp_path / "candidates.jsonl"
    rows = [
        {"id": f"{it.id}#0", "prompt_id": it.id, "prompt": to_messages(it.prompt, task.system)}
        | {"completion": f"The answer is {it.reference}.", "reference": it.reference, "verifier": task.verifier}
        for it in task.eval
    ]
    cands.write_text("".join(json.dumps(r) + "\n" for r in rows))
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=16)
    out = tmp_path / "kto.jsonl"
    run_label(LabelConfig(str(cands), str(out), on_policy=OnPolicyConfig(str(smol.hf_dir), greedy), progress=False))
    got = _student_before_from_label_eval(SimpleNamespace(dir=tmp_path), task, 16)
    fresh = eval_teacher("before", TeacherConfig(kind="hf", model=str(smol.hf_dir)), task, False, 16)
    assert got is not None and [o["answer"] for o in got.outputs] == [o["answer"] for o in fresh.outputs]
    assert _student_before_from_label_eval(SimpleNamespace(dir=tmp_path), task, 12) is None  # another budget
