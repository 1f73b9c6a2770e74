"""The runtime's chat-template rendering equals the Hugging Face tokenizer's, string and ids."""

from __future__ import annotations

import pytest

from edge_kto_runtime.chat import TemplateError, render_chat

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are BrightNest support."},
        {"role": "user", "content": "Où est le café? 😀 你好"},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ],
    [
        {"role": "system", "content": "  spaces  \n\nand newlines\t"},
        {"role": "user", "content": "{{ not a template }}"},
    ],
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_hf_apply_chat_template(smol_tokenizer, conv, add_generation_prompt):
    tok = smol_tokenizer
    want = tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=False)
    got = render_chat(tok.chat_template, conv, add_generation_prompt, bos_token=tok.bos_token, eos_token=tok.eos_token)
    assert got == want
    ids = tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tok(got, add_special_tokens=False)["input_ids"] == ids


def test_template_errors_are_clear():
    with pytest.raises(TemplateError, match="no chat template"):
        render_chat("", [{"role": "user", "content": "x"}])
    with pytest.raises(TemplateError, match="only user"):
        render_chat("{{ raise_exception('only user and assistant roles') }}", [{"role": "user", "content": "x"}])
