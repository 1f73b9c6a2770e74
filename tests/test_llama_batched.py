"""Batched teacher decoding (continuous batching on llama.cpp) against the one-at-a-time path, on a
real GGUF: same answers, greedy and sampled, whatever the batch composition."""

from __future__ import annotations

import pytest

from edge_kto.data import read_task
from edge_kto.generate import teacher_messages
from edge_kto.teacher import GenRequest, SamplingParams, TeacherConfig, make_teacher
from edge_kto_runtime.llama_batched import BatchedDecoder, DecodeRequest, shared_prefix

TASK = "edge_kto/tasks/capitals"


@pytest.fixture(scope="module")
def requests_():
    task = read_task(TASK)
    items = task.train[:10] + task.eval[:6]
    return [GenRequest(it.id, teacher_messages(it.prompt, task.system, task.teacher_context), [0]) for it in items]


def _answers(smol, parallel: int, reqs, sp: SamplingParams):
    cfg = TeacherConfig(kind="gguf", model=str(smol.gguf), n_ctx=1024, n_threads=2, parallel=parallel)
    with make_teacher(cfg) as t:
        return t.generate(reqs, sp)


@pytest.mark.real_model
def test_batched_greedy_equals_sequential_on_the_small_task(smol, requests_):
    sp = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
    sequential = _answers(smol, 1, requests_, sp)
    assert _answers(smol, 4, requests_, sp) == sequential  # 16 requests through 4 slots: slots are reused
    assert _answers(smol, 16, requests_, sp) == sequential  # all at once
    assert all(a[0] for a in sequential)


@pytest.mark.real_model
def test_batched_sample_depends_only_on_prompt_and_seed(smol, requests_):
    """Each sampled answer equals that sample computed alone on a fresh model, whatever ran beside it.

    The one-at-a-time path does not have this property: its second sample of a prompt reuses the KV
    cells of the first and comes out different from the same seed run alone (seen on SmolLM2), so a
    resumed sequential run could differ from an uninterrupted one; the batched one cannot.
    """
    reqs = [GenRequest(r.key, r.messages, [0, 1, 2]) for r in requests_[:3]]
    sp = SamplingParams(n=3, temperature=0.9, max_new_tokens=16, seed=3)
    alone = [[_answers(smol, 1, [GenRequest(r.key, r.messages, [k])], sp)[0][0] for k in range(3)] for r in reqs]
    batched = _answers(smol, 5, reqs, sp)
    assert batched == alone
    assert any(len(set(a)) > 1 for a in batched), "samples of one prompt differ"
    # A resumed run asks for only some samples, with other requests beside them: same answers.
    partial = _answers(smol, 2, [GenRequest(r.key, r.messages, [2]) for r in reqs] + requests_[5:9], sp)
    assert [p[0] for p in partial[:3]] == [a[2] for a in alone]


@pytest.mark.real_model
def test_decoder_refuses_a_request_longer_than_its_sequences(smol):
    from edge_kto_runtime.llama_engine import LlamaEngine

    eng = LlamaEngine(smol.gguf, n_ctx=512, n_threads=2)
    try:
        with BatchedDecoder(eng, 2, 256) as dec:
            assert dec.n_ctx_seq == 256
            with pytest.raises(ValueError, match="request 1: 250 prompt \\+ 16 new tokens exceed the 256"):
                list(dec.run([DecodeRequest([1, 2, 3]), DecodeRequest([5] * 250)], 16, 0.0))
            # The decoder is still usable, and an empty answer budget is not an error.
            assert [ids for _, ids in dec.run([DecodeRequest(eng.tokenize("Hello"))], 4, 0.0)][0]
    finally:
        eng.close()


def test_shared_prefix_leaves_each_prompt_a_token_to_sample_from():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5]]) == [1, 2, 3]
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[1, 2, 3], [1, 2]]) == [1]
    assert shared_prefix([[7], [1, 2]]) == []


@pytest.mark.real_model
def test_runtime_greedy_many_equals_the_one_at_a_time_loop(smol, requests_):
    """The gate's batched greedy decode (``LlamaCppBackend.greedy_many``) returns what its loop over
    ``generate_ids`` returned: the same ids, ending with the EOS id where the answer ended."""
    from edge_kto_runtime.backends.llamacpp import LlamaCppBackend
    from edge_kto_runtime.chat import render_chat

    be = LlamaCppBackend(smol.gguf, 1024, 2)
    try:
        eos = {be.llm.token_eos()}
        prompts = [be.prompt_ids(render_chat(be.chat_template or "", r.messages, True)) for r in requests_]

        def alone(p: list[int]) -> list[int]:
            out = []
            for tok in be.generate_ids(p, 8, 0.0):
                out.append(tok)
                if tok in eos:
                    break
            return out

        expected = [alone(p) for p in prompts]
        assert be.greedy_many(prompts, 8, eos) == expected
        assert any(a[-1] in eos for a in expected) and any(len(a) == 8 and a[-1] not in eos for a in expected)
    finally:
        be.close()
