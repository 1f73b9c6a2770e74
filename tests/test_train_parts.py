"""The trainer's building blocks: tokenization, batch plan, KL pairing, z0, completion log-probs."""

from __future__ import annotations

import pytest
import torch

from edge_kto.data import KTOExample
from edge_kto.train.batches import collate, plan_batches, total_micro_steps
from edge_kto.train.logps import CompletionLogps
from edge_kto.train.loss import estimate_z0, kto_loss, mismatched_log_ratio
from edge_kto.train.tokenize import Tokenized, tokenize_all


def _ex(q: str, a: str, label: bool) -> KTOExample:
    return KTOExample([{"role": "user", "content": q}], a, label)


def test_tokenize_splits_at_the_generation_prompt_and_counts_drops(smol_tokenizer):
    tok = smol_tokenizer
    rows = [_ex("What is 2+2?", "4", True), _ex("word " * 300, "short", False), _ex("Q", "long answer " * 100, True)]
    rep = tokenize_all(tok, rows, max_length=128, max_prompt_length=64)
    assert (rep.kept, rep.prompt_too_long, rep.truncated, rep.prefix_mismatch) == (2, 1, 1, 0)
    first = rep.examples[0]
    prompt_text = tok.apply_chat_template(rows[0].prompt, add_generation_prompt=True, tokenize=False)
    assert tok.decode(first.prompt_ids) == prompt_text
    assert tok.decode(first.completion_ids).startswith("4<|im_end|>")
    assert tok.eos_token_id in first.completion_ids
    assert rep.examples[1].length == 128 and rep.examples[1].index == 2


def _toy(n: int) -> list[Tokenized]:
    return [Tokenized([1] * (2 + i % 3), [10 + i] * (1 + i % 5), i % 2 == 0, i) for i in range(n)]


def test_batch_plan_is_deterministic_covers_epochs_and_groups_lengths():
    ex = _toy(40)
    a = plan_batches(ex, global_batch=4, steps=25, seed=3, group_by_length=True)
    assert a == plan_batches(ex, global_batch=4, steps=25, seed=3, group_by_length=True)
    assert a != plan_batches(ex, global_batch=4, steps=25, seed=4, group_by_length=True)
    assert len(a) == 25 and all(len(b) == 4 for b in a)
    assert sorted(i for b in a[:10] for i in b) == list(range(40)), "one epoch uses each example once"
    spread = lambda plan: sum(max(ex[i].length for i in b) - min(ex[i].length for i in b) for b in plan[:10])  # noqa: E731
    assert spread(a) < spread(plan_batches(ex, 4, 25, 3, group_by_length=False))
    assert total_micro_steps(40, 4, epochs=1.5, max_steps=None, grad_accum=2) == 16
    assert total_micro_steps(40, 4, epochs=1.0, max_steps=7, grad_accum=2) == 14


def test_length_grouping_keeps_both_classes_in_every_batch():
    # Desirable completions short, undesirable long: sorting by length alone would split the classes.
    ex = [Tokenized([1] * 5, [7] * (3 if i % 2 == 0 else 40 + i), i % 2 == 0, i) for i in range(64)]
    plan = plan_batches(ex, global_batch=8, steps=16, seed=0, group_by_length=True)
    assert all(sum(ex[i].label for i in b) == 4 for b in plan)
    assert sorted(i for b in plan[:8] for i in b) == list(range(64))


def test_kl_pairs_are_formed_over_the_global_batch():
    ex = _toy(6)
    rows = [5, 0, 3, 2]
    whole = collate(ex, rows, slice(0, 4), pad_id=0, max_length=64)
    halves = [collate(ex, rows, slice(0, 2), 0, 64), collate(ex, rows, slice(2, 4), 0, 64)]
    for i, g in enumerate(rows):  # row i pairs its prompt with the completion of row i+1
        nxt = ex[rows[(i + 1) % 4]]
        kl = whole.kl_input_ids[i][whole.kl_completion_mask[i].bool()].tolist()
        assert kl == nxt.completion_ids
        part = halves[i // 2]
        assert part.kl_input_ids[i % 2][part.kl_completion_mask[i % 2].bool()].tolist() == kl
    assert whole.labels.tolist() == [ex[g].label for g in rows]
    assert whole.tokens == sum(ex[g].length for g in rows)


def test_z0_masks_empty_pairs_and_clamps_at_zero():
    pol, ref = torch.tensor([-1.0, -2.0, -9.0]), torch.tensor([-2.0, -2.5, 0.0])
    assert estimate_z0(pol, ref, valid=torch.tensor([True, True, False])).item() == pytest.approx(0.75)
    assert estimate_z0(ref, pol, valid=torch.tensor([True, True, False])).item() == 0.0
    # before the clamp (logged as kl_raw): the mean log-ratio itself, negative when the policy gives
    # the mismatched answers less probability than the reference
    assert mismatched_log_ratio(ref, pol, valid=torch.tensor([True, True, False])).item() == pytest.approx(-0.75)


def test_kto_loss_matches_the_paper_formula():
    pol, ref = torch.tensor([-3.0, -5.0, -4.0]), torch.tensor([-4.0, -4.0, -4.0])
    labels = torch.tensor([True, False, True])
    z0, beta, ld, lu = torch.tensor(0.2), 0.5, 1.5, 0.7
    out = kto_loss(pol, ref, labels, z0, beta=beta, desirable_weight=ld, undesirable_weight=lu)
    r = pol - ref
    v = torch.where(labels, ld * torch.sigmoid(beta * (r - z0)), lu * torch.sigmoid(beta * (z0 - r)))
    lam = torch.where(labels, torch.tensor(ld), torch.tensor(lu))
    assert out.loss.item() == pytest.approx((lam - v).mean().item(), abs=1e-7)
    assert torch.allclose(out.rewards, beta * r)
    with pytest.raises(ValueError, match="loss_type"):
        kto_loss(pol, ref, labels, z0, loss_type="dpo")


def test_the_nll_anchor_is_trls_chosen_cross_entropy_per_token():
    """``nll_weight``: KTO + weight x the desirable rows' NLL per token -- what TRL's ``rpo_alpha`` adds
    to DPO (cross-entropy over the chosen tokens); undesirable rows and padding are not in it."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    token_logps = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    pol = (token_logps * mask).sum(1)
    labels = torch.tensor([True, False, True])
    ref, z0 = pol.detach() - 0.3, torch.tensor(0.0, dtype=torch.float64)
    plain = kto_loss(pol, ref, labels, z0, beta=0.1, completion_tokens=mask.sum(1))
    anchored = kto_loss(pol, ref, labels, z0, beta=0.1, nll_weight=0.5, completion_tokens=mask.sum(1))
    chosen = mask & labels[:, None]
    trl_nll = torch.nn.functional.cross_entropy(logits[chosen], targets[chosen])  # mean over chosen tokens
    assert anchored.nll.item() == pytest.approx(trl_nll.item(), rel=1e-12) == pytest.approx(plain.nll.item())
    assert anchored.loss.item() == pytest.approx(plain.loss.item() + 0.5 * trl_nll.item(), rel=1e-12)
    assert torch.equal(anchored.losses, plain.losses)  # per-row KTO values are unchanged
    with pytest.raises(ValueError, match="completion_tokens"):
        kto_loss(pol, ref, labels, z0, nll_weight=0.5)


@pytest.mark.integration
def test_completion_logps_equal_a_full_log_softmax(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    ids = torch.randint(0, 1000, (3, 12))
    att = torch.ones_like(ids)
    att[2, 9:] = 0  # right padding
    comp = torch.zeros_like(ids)
    comp[0, 5:], comp[1, 8:], comp[2, 4:9] = 1, 1, 1
    with torch.no_grad():
        ours = CompletionLogps(model)(ids, att, comp)
        full = model(input_ids=ids, attention_mask=att).logits.log_softmax(-1)
    want = (full[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * comp[:, 1:]).sum(-1)
    assert torch.allclose(ours, want, atol=1e-9)


def test_the_logged_nll_averages_only_micro_batches_with_desirable_rows():
    """A micro-batch of undesirable rows only has no NLL to measure; counting it as 0 would halve the log."""
    from edge_kto.train.metrics import StepAccumulator

    acc, zero, losses = StepAccumulator(torch.device("cpu")), torch.tensor(0.0), torch.tensor([0.5, 0.5])
    acc.add(
        losses,
        zero,
        torch.zeros(2),
        torch.tensor([-2.0, -3.0]),
        torch.tensor([True, False]),
        10,
        zero,
        torch.tensor(0.4),
    )
    acc.add(losses, zero, torch.zeros(2), torch.tensor([-2.0, -3.0]), torch.tensor([False, False]), 10, zero, zero)
    assert acc.reduce(None, 1)["nll"] == pytest.approx(0.4)
