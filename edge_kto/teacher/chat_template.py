"""Render a Hugging Face chat template (Jinja2) without transformers.

Same environment as transformers' ``apply_chat_template``: sandboxed, ``trim_blocks`` and
``lstrip_blocks``, ``raise_exception`` and ``strftime_now`` available, ``tojson`` that keeps
non-ASCII characters.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(template: str, messages: list[dict], *, bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    return _compile(template).render(
        messages=messages, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=add_generation_prompt
    )
