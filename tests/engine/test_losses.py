"""Each loss equals its formula, computed by hand on small tensors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from training.engine import losses


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_dpo_loss_equals_sigmoid_formula() -> None:
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.5, -1.0])
    loss, chosen, rejected = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    h = [(-1.0 + 1.5) - (-3.0 + 2.5), (-2.0 + 2.0) - (-1.5 + 1.0)]
    expected = sum(-math.log(sig(0.5 * x)) for x in h) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.25, 0.0])
    assert rejected.tolist() == pytest.approx([-0.25, -0.25])


def test_dpo_label_smoothing_mixes_both_directions() -> None:
    z = torch.tensor([0.0])
    loss, _, _ = losses.dpo_loss(torch.tensor([1.0]), z, z, z, beta=1.0, label_smoothing=0.2)
    expected = -0.8 * math.log(sig(1.0)) - 0.2 * math.log(sig(-1.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_equals_formula_with_centering() -> None:
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0])
    loss = losses.bradley_terry_loss(rc, rr, center_coefficient=0.1)
    expected = (-math.log(sig(1.0)) - math.log(sig(-0.5))) / 2 + 0.1 * (9.0 + 2.25) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_group_batch_and_none() -> None:
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0, 1.0])
    none = losses.group_advantages(r, group_size=3, scale="none")
    assert none.tolist() == pytest.approx([1 / 3, -2 / 3, 1 / 3, -4 / 3, 5 / 3, -1 / 3], rel=1e-6)
    group = losses.group_advantages(r, group_size=3, scale="group", eps=0.0)
    std1, std2 = torch.tensor([1.0, 0.0, 1.0]).std().item(), torch.tensor([0.0, 3.0, 1.0]).std().item()
    assert group[:3].tolist() == pytest.approx((none[:3] / std1).tolist(), rel=1e-6)
    assert group[3:].tolist() == pytest.approx((none[3:] / std2).tolist(), rel=1e-6)
    batch = losses.group_advantages(r, group_size=3, scale="batch", eps=0.0)
    assert batch.tolist() == pytest.approx((none / r.std()).tolist(), rel=1e-6)


def test_group_advantages_zero_when_group_rewards_are_equal() -> None:
    adv = losses.group_advantages(torch.tensor([2.0, 2.0, 2.0, 2.0]), group_size=4, scale="group")
    assert torch.equal(adv, torch.zeros(4))


def test_k3_kl_equals_formula_and_is_zero_at_equality() -> None:
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    kl = losses.k3_kl(logp, ref)
    assert kl[0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1.0, rel=1e-6)
    assert kl[1].item() == 0.0


def test_clipped_loss_uses_asymmetric_bounds() -> None:
    old = torch.zeros(2, 3)
    logps = torch.log(torch.tensor([[1.5, 1.1, 0.5], [1.5, 1.1, 0.5]]))
    adv = torch.tensor([1.0, -1.0])
    loss, ratio = losses.clipped_token_loss(logps, old, adv, epsilon_low=0.2, epsilon_high=0.28)
    # positive advantage: min(r, clip(r)) -> clipped at 1.28 above, r below; negative: max(r, clip(r)) -> 0.8 below
    assert (-loss[0]).tolist() == pytest.approx([1.28, 1.1, 0.5], rel=1e-6)
    assert (-loss[1]).tolist() == pytest.approx([-1.5, -1.1, -0.8], rel=1e-6)
    assert ratio[0].tolist() == pytest.approx([1.5, 1.1, 0.5], rel=1e-6)


def test_clip_ratio_metrics_count_active_clips() -> None:
    ratio = torch.tensor([[1.5, 1.0], [0.5, 1.0]])
    metrics = losses.clip_ratio_metrics(
        ratio, torch.tensor([1.0, -1.0]), torch.ones(2, 2), epsilon_low=0.2, epsilon_high=0.2
    )
    assert metrics == {
        "clip_ratio/low_mean": 0.25,
        "clip_ratio/high_mean": 0.25,
        "clip_ratio/region_mean": 0.5,
        "clip_ratio/low_min": 0.0,  # completion 0 has A > 0: no low clip there
        "clip_ratio/high_max": 0.5,  # completion 0: one of its two tokens clipped high
    }


PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", ((1 + 2 + 3) / 3 + 4 / 1) / 2),
        ("bnpo", (1 + 2 + 3 + 4) / 4),
        ("dr_grpo", (1 + 2 + 3 + 4) / (2 * 8)),
        ("dapo", (1 + 2 + 3 + 4) / 10),
    ],
)
def test_aggregation_matches_trl_loss_types(loss_type: str, expected: float) -> None:
    # dapo divides by the tokens of the whole generation batch (10 here, across micro-batches), not this one's 4
    got = losses.aggregate_token_loss(
        PER_TOKEN, MASK, loss_type=loss_type, max_completion_length=8, num_items_in_batch=10
    )
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_gtpo_shaped_advantages_filter_and_penalise_by_entropy() -> None:
    adv = torch.tensor([1.0, 0.0, -1.0, 1.0])
    entropy = torch.tensor([0.5, 0.3, 0.7, 0.71])
    shaped, keep = losses.gtpo_shaped_advantages(adv, entropy, threshold=0.7, penalty=0.1)
    # kept (H <= 0.7): A - 0.1 H, even where A = 0; dropped: 0
    assert shaped.tolist() == pytest.approx([0.95, -0.03, -1.07, 0.0], rel=1e-6)
    assert keep.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_guard_normalisation_centres_log_ratio_per_position() -> None:
    logps = torch.tensor([[0.2, 0.1], [0.4, -0.3], [0.0, 0.5]], requires_grad=True)
    old = torch.zeros(3, 2)
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    normed = losses.guard_normalised_log_ratio(logps, old, mask)
    # position 0: mean of 0.2, 0.4, 0.0 = 0.2; position 1: mean of 0.1, -0.3 (third is padding) = -0.1
    assert torch.allclose(normed.detach(), torch.tensor([[0.0, 0.2], [0.2, -0.2], [-0.2, 0.0]]), atol=1e-6)
    normed.sum().backward()
    assert logps.grad is not None
    assert logps.grad.tolist() == [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]  # the mean is a stop-gradient


def test_guard_normalisation_is_identity_on_first_pass() -> None:
    logps = torch.randn(4, 3)
    assert torch.equal(losses.guard_normalised_log_ratio(logps, logps, torch.ones(4, 3)), torch.zeros(4, 3))


def test_sft_loss_ignores_prompt_tokens() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = 5.0  # predicts the token at position 2
    labels = torch.tensor([[-100, -100, 2]])
    loss, accuracy = losses.sft_loss(logits, labels)
    expected = -torch.log_softmax(logits[0, 1], -1)[2].item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy == 1.0


def test_dpo_loss_of_a_shared_prompt_batch_equals_trl_dpotrainer(tmp_path: Path) -> None:
    """Fixed token ids, one tiny model: our loss (one row per pair, the prompt computed once) equals TRL 1.16's
    DPOTrainer loss on its own collator's batch (two padded rows per pair). TRL is a bench dependency."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from training.engine.checkpoints import save_model_folder
    from training.engine.config import DPOConfig
    from training.engine.modeling import load_causal_lm, train_char_tokenizer
    from training.engine.pairs import encode_preferences, shared_prompt_batch, shared_prompt_logps
    from training.engine.truncation import Truncation

    triples = [("abc>", "abc", "cbax"), ("hello there>", "ok", "no thanks"), ("x>", "a longer answer", "b")]
    tokenizer = train_char_tokenizer([t for triple in triples for t in triple])
    config = DPOConfig(tiny_hidden_size=32, tiny_num_layers=2, tiny_num_heads=2)
    save_model_folder(
        tmp_path / "policy",
        model=load_causal_lm("tiny", config=config, tokenizer=tokenizer, seed=1, device=torch.device("cpu")),
        tokenizer=tokenizer,
    )
    save_model_folder(
        tmp_path / "ref",
        model=load_causal_lm("tiny", config=config, tokenizer=tokenizer, seed=2, device=torch.device("cpu")),
        tokenizer=tokenizer,
    )
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "ref")
    encoded, _ = encode_preferences(tokenizer, triples, Truncation(max_length=64, max_prompt_length=32))
    pairs = [p for p in encoded if p is not None]

    trainer = DPOTrainer(
        model=policy,
        ref_model=ref,
        args=TRLDPOConfig(output_dir=str(tmp_path / "trl"), beta=0.3, use_cpu=True, report_to="none"),
        train_dataset=Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]),
        processing_class=tokenizer,
    )
    collator = DataCollatorForPreference(pad_token_id=int(tokenizer.pad_token_id))
    inputs = collator(
        [{"prompt_ids": p.prompt.tolist(), "chosen_ids": p.chosen.tolist(), "rejected_ids": p.rejected.tolist()}
         for p in pairs]
    )  # fmt: skip
    policy.train(False)  # both sides without dropout (the tiny Llama has none; this keeps it explicit)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(policy, inputs))
        batch = shared_prompt_batch(pairs, pad_id=int(tokenizer.pad_token_id))
        chosen, rejected = shared_prompt_logps(policy, batch)
        ref_chosen, ref_rejected = shared_prompt_logps(ref, batch)
        ours, _, _ = losses.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.3)
    assert trl_loss != pytest.approx(math.log(2), abs=1e-3)  # policy and reference differ: a real comparison
    assert float(ours) == pytest.approx(trl_loss, rel=1e-5, abs=1e-6)
