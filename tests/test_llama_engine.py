"""Contract tests for the one llama.cpp engine: every private llama-cpp-python attribute it uses
(``PRIVATE_API``) exists and does what the engine relies on, so an upgrade that breaks one fails
here and at load, not in a user's generation."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest

from edge_kto_runtime.errors import MissingDependency
from edge_kto_runtime.llama_engine import PRIVATE_API, LlamaEngine, check_private_api

ART = "model-q8_0.gguf"


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    eng = LlamaEngine(tiny_bundle / ART, n_ctx=256, n_threads=2)
    yield eng
    eng.close()


@pytest.mark.integration
def test_every_private_attribute_is_there(engine):
    check_private_api(engine.llm)
    for owner, attr in PRIVATE_API:
        obj = engine.llm if owner == "Llama" else getattr(engine.llm, owner)
        assert hasattr(obj, attr), (owner, attr)


def test_a_missing_private_attribute_is_refused_by_name():
    class Moved:
        _input_ids = _ctx = _batch = None  # no _model

    with pytest.raises(MissingDependency, match=r"Llama\._model .*<0\.4"):
        check_private_api(Moved())


@pytest.mark.integration
def test_prefix_reuse_gives_the_same_greedy_ids_as_a_fresh_context(engine):
    """_input_ids / n_tokens / _ctx.kv_cache_seq_rm: keeping a shared prefix changes nothing."""
    a = engine.tokenize("the hub light blinks when the battery")
    b = a[:-2] + engine.tokenize(" door sensor")
    engine.reset()
    fresh = list(engine.generate_ids(b, 6, 0.0))
    list(engine.generate_ids(a, 3, 0.0))  # leaves a's prefix in the KV cache
    assert list(engine.generate_ids(b, 6, 0.0)) == fresh
    assert list(engine.generate_ids(b, 6, 0.0)) == fresh  # a repeated request repeats


@pytest.mark.integration
def test_greedy_reads_the_argmax_of_the_last_logits(engine):
    """_ctx.get_logits_ith(-1): the logits after the last evaluated token."""
    ids = engine.tokenize("open the app and tap")
    engine.reset()
    engine.eval(ids)
    want = int(engine.last_logits().argmax())
    assert next(engine.generate_ids(ids, 1, 0.0)) == want


@pytest.mark.integration
def test_batched_scoring_rows_match_one_full_pass(engine):
    """_batch.set_batch / batch.logits flags / _ctx.decode: rows only where asked, same values."""
    ids = engine.tokenize("hold the reset button for ten seconds until the light turns blue")
    full = engine.logits(ids, list(range(len(ids))))
    some = [0, 3, len(ids) - 1]
    np.testing.assert_allclose(engine.logits(ids, some), full[some], rtol=1e-4, atol=1e-4)
    engine.reset()
    engine.eval(ids)
    np.testing.assert_allclose(engine.last_logits(), full[-1], rtol=1e-3, atol=1e-3)


@pytest.mark.integration
def test_bos_rule_and_special_text(engine):
    """_model.token_get_text / add_bos_token: BOS added once, never twice."""
    bos, eos = engine.special_text()
    assert eos and isinstance(bos, str)
    wants_bos = bool(engine.llm._model.add_bos_token())
    ids = engine.prompt_ids("hello")
    assert (ids[0] == engine.llm.token_bos()) == wants_bos
    if bos:
        assert engine.prompt_ids(bos + "hello").count(engine.llm.token_bos()) == 1


@pytest.mark.integration
def test_state_round_trip(engine, tmp_path):
    """LlamaState: a saved prefix restores the same n_tokens; another key is refused."""
    ids = engine.tokenize("the schedule changes at noon")
    (tmp_path / "s.npz").write_bytes(engine.save_state(ids, "k"))
    engine.reset()
    assert engine.load_state(tmp_path / "s.npz", "k") == len(ids)
    with pytest.raises(ValueError, match="another model or prompt"):
        engine.load_state(tmp_path / "s.npz", "other")
    assert llama_cpp.__version__.startswith("0.3.")
