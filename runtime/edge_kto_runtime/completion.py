"""The completion-ids rule: which tokens of a rendered chat are "the answer".

One rule for the three places that need it — training (the tokens KTO scores), the golden set
(the tokens the export's gate scores) and the runtime's ``EdgeModel.score`` — because the gate
compares artifacts on exactly the quantity training optimised; three versions had drifted.

The answer is the rendering of prompt + assistant turn minus the longest common prefix with the
rendering of the prompt alone (with the generation prompt). Templates for which the prompt is not
a prefix (the prefix property breaks) are split where the two diverge, as TRL does. EOS is
appended when the template did not end the turn with it (within its last two tokens: ChatML ends
with ``<|im_end|>`` then a newline).
"""

from __future__ import annotations


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_completion(prompt_ids: list[int], full_ids: list[int], eos_id: int | None) -> tuple[list[int], list[int]]:
    """``(prompt part, completion part)`` of ``full_ids``; the prompt part is shorter than
    ``prompt_ids`` only when the template breaks the prefix property."""
    cut = common_prefix(prompt_ids, full_ids)
    completion = full_ids[cut:]
    if eos_id is not None and eos_id not in completion[-2:]:
        completion = completion + [eos_id]
    return full_ids[:cut], completion
