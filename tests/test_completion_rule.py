"""The completion-ids rule is one function (edge_kto_runtime.completion): training, the golden set
and the runtime's EdgeModel.score give the very same answer ids — the quantity the gate compares
against what training optimised."""

from __future__ import annotations

import pytest

from edge_kto.data import KTOExample
from edge_kto.export.golden import _completion_ids, chat_ids
from edge_kto.train.tokenize import TokenizeReport, tokenize_example
from edge_kto_runtime.completion import split_completion
from edge_kto_runtime.model import load

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "How do I reset the hub?"}]
ANSWER = "Hold the reset button for 10 seconds."


def test_split_rule():
    assert split_completion([1, 2, 3], [1, 2, 3, 7, 8, 2, 9], eos_id=2) == (
        [1, 2, 3],
        [7, 8, 2, 9],
    )  # EOS in the last two
    assert split_completion([1, 2, 3], [1, 2, 3, 7, 8], eos_id=2) == ([1, 2, 3], [7, 8, 2])  # appended
    assert split_completion([1, 5, 3], [1, 2, 3, 7], eos_id=None) == (
        [1],
        [2, 3, 7],
    )  # prefix broken: split where it diverges


@pytest.mark.integration
def test_training_golden_and_runtime_agree_on_the_answer_ids(tiny_bundle, smol_tokenizer):
    tok = smol_tokenizer
    ex = KTOExample(prompt=MESSAGES, completion=ANSWER, label=True)
    trained = tokenize_example(tok, ex, 0, max_length=512, max_prompt_length=256, report=TokenizeReport())
    golden = _completion_ids(tok, MESSAGES, chat_ids(tok, MESSAGES), ANSWER)
    assert trained is not None and golden == trained.completion_ids
    with load(tiny_bundle, artifact="model-q8_0.gguf", verify=False) as m:
        prompt_ids = m.encode(MESSAGES)
        assert prompt_ids == trained.prompt_ids  # the runtime renders and tokenizes the prompt like training
        assert m._completion_ids(MESSAGES, prompt_ids, ANSWER) == trained.completion_ids
        assert m.score(MESSAGES, ANSWER) == pytest.approx(m.score_ids(prompt_ids, trained.completion_ids))
