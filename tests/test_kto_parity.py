"""Our KTO loss, z0 and rewards against TRL's KTOTrainer on the same tiny model and batch."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_kto.train.logps import CompletionLogps
from edge_kto.train.loss import estimate_z0, kto_loss

pytestmark = pytest.mark.integration

trl = pytest.importorskip("trl")


def _rows():
    qa = [
        ("What is 2+2?", "4", True),
        ("Name a fruit.", "A hammer.", False),
        ("Say hi.", "Hello there!", True),
        ("Capital of Italy?", "Rome is the capital of Italy.", True),
        ("Color of the sky?", "Purple, always.", False),
        ("Opposite of up?", "Down.", True),
        ("Is ice cold?", "No, ice is hot.", False),
        ("2*3?", "6", True),
    ]
    return [
        {"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}], "label": lab}
        for q, a, lab in qa
    ]


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_loss_kl_and_rewards_match_trl(tmp_path, tiny_model_dir, smol_tokenizer, loss_type):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():  # make the policy differ from the reference so r and z0 are not zero
        ref = copy.deepcopy(model)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=8,
        beta=0.3,
        desirable_weight=1.3,
        undesirable_weight=0.9,
        loss_type=loss_type,
        report_to=[],
        max_length=256,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=True,
        logging_steps=1,
        bf16=False,
    )  # KTOConfig defaults to bf16: accelerate would autocast TRL's ref forward
    trainer = KTOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=smol_tokenizer
    )
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    ref.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, batch).item()
    m = {k: v[-1] for k, v in trainer._metrics["eval"].items() if v}  # eval mode: no dropout

    pol, rf = CompletionLogps(model), CompletionLogps(ref)
    with torch.no_grad():
        logps = pol(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        ref_logps = rf(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        z0 = torch.zeros(())
        if loss_type == "kto":
            z0 = estimate_z0(
                pol(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]),
                rf(batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"]),
            )
        labels = torch.as_tensor(batch["label"], dtype=torch.bool)
        out = kto_loss(
            logps, ref_logps, labels, z0, beta=0.3, desirable_weight=1.3, undesirable_weight=0.9, loss_type=loss_type
        )

    assert labels.any() and (~labels).any()
    assert out.loss.item() == pytest.approx(trl_loss, abs=1e-5)
    if loss_type == "kto":
        assert out.kl.item() == pytest.approx(m["kl"], abs=1e-5) and out.kl.item() > 0
    assert out.rewards[labels].mean().item() == pytest.approx(m["rewards/chosen"], abs=1e-5)
    assert out.rewards[~labels].mean().item() == pytest.approx(m["rewards/rejected"], abs=1e-5)
    assert logps[labels].mean().item() == pytest.approx(m["logps/chosen"], abs=1e-5)
    assert logps[~labels].mean().item() == pytest.approx(m["logps/rejected"], abs=1e-5)
