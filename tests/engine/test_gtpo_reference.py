"""Our GTPO equals its authors' code on fixed tensors: conflict weights, counts, entropy shaping, loss and gradient.

The reference below is a transcription of github.com/winstonsmith1897/GTPO, gtpo/gtpo_training.py at commit
5d33811 — ``build_conflict_mask``, ``gtpo_compute_loss``, the entropy of ``compute_completion_stats`` and the
"entropy shaping" and per-completion sum of ``UnslothEfficientGTPO.forward`` — with their debug prints, wandb
calls and Unsloth's hidden-state plumbing (logits = hidden @ lm_head) left out. Their constants are module
globals; the transcription keeps them. It is compared with the recipe's own ``_gtpo_step``, not with a re-wiring
of our loss functions, so the composition the engine runs is what is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.engine import losses
from training.engine.batching import token_logprobs_and_entropy
from training.engine.recipes import build_recipe
from training.engine.recipes.grpo import GenerationBatch, GRPORecipe

# --- transcription of the authors' code (gtpo/gtpo_training.py @ 5d33811) ------------------------------------
ENT_THRESHOLD = 0.7
ENT_SCALE = 0.1
W_RAW = 2.0
PAD_ID = 10
EPS = 1e-6


def ref_completion_entropy(new_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """compute_completion_stats: the entropy half (their function also returns a KL that only feeds a metric)."""
    mask_f = mask.float()
    n_tok = mask_f.sum().clamp(min=1.0)
    probs = torch.softmax(new_logits, dim=-1)
    entropy = -(probs * torch.log(probs.clamp_min(EPS))).sum(-1)
    return (entropy * mask_f).sum() / n_tok


def ref_build_conflict_mask(
    ids: torch.Tensor, mask: torch.Tensor, pos_flags: torch.Tensor, neg_flags: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    G, L = ids.shape
    device = ids.device
    active_flags = pos_flags | neg_flags
    active_idx = active_flags.nonzero(as_tuple=True)[0]
    G_act = active_idx.numel()
    if G_act == 0:
        delta_default = mask.float()
        conflict_zero = torch.zeros_like(mask, dtype=torch.float)
        seq_count_zero = torch.zeros(G, dtype=torch.long, device=device)
        return delta_default, conflict_zero, seq_count_zero
    ids_use = ids[active_idx]
    mask_use = mask[active_idx]
    pos_use = pos_flags[active_idx]
    neg_use = neg_flags[active_idx]
    # 1) forward
    step_idx = torch.arange(L, device=device).unsqueeze(0)
    keys = (step_idx * vocab_size + ids_use).view(-1)
    rpt_pos = pos_use.repeat_interleave(L)
    rpt_neg = neg_use.repeat_interleave(L)
    freq_pos = torch.bincount(keys[rpt_pos], minlength=vocab_size * L).clamp_max(1)
    freq_neg = torch.bincount(keys[rpt_neg], minlength=vocab_size * L).clamp_max(1)
    conflict_raw = (freq_pos.bool() & freq_neg.bool())[keys].view(G_act, L)
    valid_mask = ids_use != PAD_ID
    initial_run = torch.cumprod(conflict_raw.to(torch.int), dim=1).bool()
    conflict_fwd = initial_run & valid_mask
    w_conf_fwd = torch.where(conflict_fwd, torch.tensor(W_RAW, device=device), torch.ones((), device=device))
    delta_fwd = torch.where(~conflict_fwd, 1.0, torch.where(pos_use.unsqueeze(1), w_conf_fwd, 0.0)) * mask_use
    # 2) backward (reverse)
    seq_len = mask_use.sum(-1)
    pad_len = L - seq_len
    ids_flip = ids_use.flip(-1)
    idx_shift = (step_idx + pad_len.unsqueeze(1)) % L
    ids_rev = ids_flip.gather(1, idx_shift)
    step_rev = torch.arange(L, device=device).flip(0).unsqueeze(0)
    keys_rev = (step_rev * vocab_size + ids_rev).view(-1)
    freq_pos_r = torch.bincount(keys_rev[rpt_pos], minlength=vocab_size * L).clamp_max(1)
    freq_neg_r = torch.bincount(keys_rev[rpt_neg], minlength=vocab_size * L).clamp_max(1)
    conflict_raw_rev = (freq_pos_r.bool() & freq_neg_r.bool())[keys_rev].view(G_act, L)
    initial_run_rev = torch.cumprod(conflict_raw_rev.to(torch.int), dim=1).bool()
    conflict_rev = initial_run_rev & valid_mask
    w_conf_rev = torch.where(conflict_rev, torch.tensor(W_RAW, device=device), torch.ones((), device=device))
    delta_bw_rev = torch.where(~conflict_rev, 1.0, torch.where(pos_use.unsqueeze(1), w_conf_rev, 0.0))
    idx_unshift = (step_idx - pad_len.unsqueeze(1)) % L
    delta_bw_rot = delta_bw_rev.gather(1, idx_unshift)
    delta_bw_use = delta_bw_rot.flip(-1) * mask_use
    # 3) final mask and stats
    delta_final_use = delta_fwd * delta_bw_use
    total_conflict_use = (conflict_fwd | conflict_rev) & mask_use.bool()
    n_conflict_seq_use = total_conflict_use.sum(-1).long().clamp_min(1)
    delta_final = mask.float().clone()
    total_conflict = torch.zeros_like(mask, dtype=torch.float)
    n_conflict_seq = torch.zeros(G, dtype=torch.long, device=device)
    delta_final[active_idx] = delta_final_use
    total_conflict[active_idx] = total_conflict_use.float()
    n_conflict_seq[active_idx] = n_conflict_seq_use
    return delta_final, total_conflict, n_conflict_seq


def ref_gtpo_compute_loss(
    new_logits: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    delta: torch.Tensor,
    advantages: torch.Tensor,
    n_conflict: torch.Tensor,
) -> torch.Tensor:
    """gtpo_compute_loss (their old_logits and beta only feed a KL metric: left out)."""
    mask_f = mask.float()
    n_tok = mask_f.sum().clamp(min=1.0)
    idx = input_ids.unsqueeze(-1)
    new_logp = new_logits.gather(-1, idx).squeeze(-1) - torch.logsumexp(new_logits, dim=-1)
    ratio = torch.exp(new_logp - new_logp.detach())
    adv = advantages.squeeze()
    loss_token = -(ratio * adv * delta)
    loss_disp = (loss_token * mask_f).sum() / n_tok
    return (loss_disp / n_conflict.clamp(min=1)).mean()


def ref_gtpo_total_loss(
    logits: torch.Tensor, comp_ids: torch.Tensor, comp_mask: torch.Tensor, advantages: torch.Tensor
) -> torch.Tensor:
    """UnslothEfficientGTPO.forward for (B, G, L) completions: entropies, conflict masks, shaping, summed loss."""
    B, G, _ = comp_ids.shape
    vocab_size = logits.size(-1)
    adv_BG = advantages.view(B, G)
    entropies = torch.zeros((B, G))
    for b in range(B):
        for g in range(G):
            entropies[b, g] = ref_completion_entropy(logits[b, g].detach(), comp_mask[b, g])
    low_ent = entropies <= ENT_THRESHOLD
    delta_masks = torch.zeros_like(comp_mask, dtype=torch.float32)
    n_conflict_seq = torch.zeros((B, G), dtype=torch.long)
    for b in range(B):
        adv_b = adv_BG[b]
        delta_b, _, nconf_b = ref_build_conflict_mask(comp_ids[b], comp_mask[b], adv_b > 0, adv_b < 0, vocab_size)
        delta_masks[b] = delta_b
        n_conflict_seq[b] = nconf_b
    adv_BG = torch.where(low_ent, adv_BG - ENT_SCALE * entropies, torch.zeros_like(adv_BG))
    total = torch.zeros(())
    for b in range(B):
        for g in range(G):
            total = total + ref_gtpo_compute_loss(
                logits[b, g],
                comp_ids[b, g],
                comp_mask[b, g],
                delta_masks[b, g],
                adv_BG[b, g].unsqueeze(0),
                n_conflict_seq[b, g].unsqueeze(0),
            )
    return total


# --- fixed tensors ---------------------------------------------------------------------------------------------


def fixed_batch(seed: int, *, groups: int = 3, group_size: int = 5, length: int = 7, vocab: int = 11) -> Any:
    """Completions from a 4-token alphabet (so prefixes and suffixes are often shared), varying lengths, right
    padding with PAD_ID, advantages with ties, zeros and both signs; logits sharp enough that some completions
    fall under the 0.7-nat threshold and some above."""
    gen = torch.Generator().manual_seed(seed)
    n = groups * group_size
    ids = torch.randint(0, 4, (n, length), generator=gen)
    ids[:, :2] = torch.randint(0, 2, (n, 2), generator=gen)  # common openings
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD_ID))
    rewards = torch.randint(0, 3, (n,), generator=gen).float()
    rewards[:group_size] = 1.0  # one group ties: every advantage 0
    advantages = losses.group_advantages(rewards, group_size=group_size, scale="none")
    scale = torch.rand((n, 1, 1), generator=gen) * 12  # per completion: from flat (high entropy) to sharp
    logits = torch.randn((n, length, vocab), generator=gen) * scale
    return ids, mask, advantages, logits


def test_conflict_tokens_are_the_shared_prefix_and_suffix_not_any_same_position_match() -> None:
    # one group: a positive and a negative completion that share "5 6" at the start, "8" in the middle at the
    # same position (not part of either run) and "9" at the end, at different absolute positions
    ids = torch.tensor([[5, 6, 7, 8, 4, 9], [5, 6, 3, 8, 9, PAD_ID]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    found = losses.gtpo_conflict_weights(ids, mask, adv, group_size=2, boost=2.0)
    assert found.conflict.tolist() == [
        [True, True, False, False, False, True],
        [True, True, False, False, True, False],
    ]
    assert found.weights.tolist() == [[2.0, 2.0, 1.0, 1.0, 1.0, 2.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]]
    # Their n_conflict ORs the prefix run with the suffix run counted from the end: max(2, 1), not 2 + 1.
    assert found.count.tolist() == [2, 2]
    delta, _, count = ref_build_conflict_mask(ids, mask, adv > 0, adv < 0, vocab_size=11)
    assert torch.equal(found.weights, delta)
    assert torch.equal(found.count, count)


def test_a_token_in_both_runs_of_a_positive_completion_weighs_boost_squared() -> None:
    ids = torch.tensor([[1, 2], [1, 2], [1, 3]])
    mask = torch.ones(3, 2, dtype=torch.long)
    adv = torch.tensor([1.0, -0.5, -0.5])
    found = losses.gtpo_conflict_weights(ids, mask, adv, group_size=3, boost=2.0)
    # completion 0 equals completion 1 entirely: every token is in the prefix run and in the suffix run
    assert found.weights[0].tolist() == [4.0, 4.0]
    assert found.count.tolist() == [2, 2, 1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_conflict_weights_equal_the_authors_build_conflict_mask(seed: int) -> None:
    ids, mask, adv, _ = fixed_batch(seed)
    found = losses.gtpo_conflict_weights(ids, mask, adv, group_size=5, boost=W_RAW)
    for g in range(3):
        rows = slice(5 * g, 5 * g + 5)
        delta, _, count = ref_build_conflict_mask(ids[rows], mask[rows], adv[rows] > 0, adv[rows] < 0, 11)
        assert torch.equal(found.weights[rows], delta), g
        assert torch.equal(found.count[rows], count.clamp(min=1)), g
    # conflict tokens are exactly the tokens whose weight is not 1 (boost 2 or 0) in completions with A != 0
    active = (adv != 0).unsqueeze(1)
    assert torch.equal(found.conflict, (found.weights != 1) & mask.bool() & active)
    assert found.conflict.any() and (found.count > 1).any()  # the fixed tensors do exercise conflicts


@pytest.fixture
def gtpo_recipe(context_factory: Any) -> GRPORecipe:
    ctx, _ = context_factory(
        "grpo",
        {"variant": "gtpo", "scale_rewards": "none", "num_generations": 5, "batch_size": 3, "max_steps": 1},
    )
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    assert (recipe.config.gtpo_entropy_threshold, recipe.config.gtpo_entropy_penalty) == (ENT_THRESHOLD, ENT_SCALE)
    assert recipe.config.gtpo_conflict_boost == W_RAW
    return recipe


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gtpo_step_loss_and_gradient_equal_the_authors_code(gtpo_recipe: GRPORecipe, seed: int) -> None:
    ids, mask, adv, logits = fixed_batch(seed)
    length = logits.size(1)
    theirs_logits = logits.clone().requires_grad_(True)
    theirs = ref_gtpo_total_loss(theirs_logits.view(3, 5, length, -1), ids.view(3, 5, -1), mask.view(3, 5, -1), adv)
    theirs.backward()

    ours_logits = logits.clone().requires_grad_(True)
    targets = ids.masked_fill(mask == 0, -100)
    logps = token_logprobs_and_entropy(ours_logits, targets)[0]
    entropy = losses.gtpo_token_entropy(ours_logits)
    batch = GenerationBatch(
        input_ids=ids, attention_mask=mask, prompt_width=0, completion_ids=ids, completion_mask=mask,
        advantages=adv, old_logps=None, ref_logps=None, metrics={},
    )  # fmt: skip
    config = gtpo_recipe.config
    conflicts = losses.gtpo_conflict_weights(
        ids, mask, adv, group_size=config.num_generations, boost=config.gtpo_conflict_boost
    )
    loss, found = gtpo_recipe._gtpo_loss(batch, logps, entropy, conflicts)
    loss.backward()

    assert float(loss.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5, abs=1e-6)
    assert ours_logits.grad is not None and theirs_logits.grad is not None
    assert torch.allclose(ours_logits.grad, theirs_logits.grad, rtol=1e-5, atol=1e-7)
    kept = float(found["keep"].float().mean())
    assert 0.0 < kept < 1.0  # the threshold bites on these tensors: some completions kept, some dropped
    assert float(theirs_logits.grad.abs().sum()) > 0


def test_gtpo_entropy_is_the_authors_clamped_form() -> None:
    # one likely token and 49,999 at p ~ 1e-7: there the clamp at 1e-6 changes the entropy by ~0.01 nats
    logits = torch.full((1, 1, 50_000), -16.0)
    logits[0, 0, 0] = 0.0
    mask = torch.ones(1, 1)
    theirs = ref_completion_entropy(logits[0], mask[0])
    ours = losses.gtpo_token_entropy(logits)[0, 0]
    exact = token_logprobs_and_entropy(logits, torch.zeros(1, 1, dtype=torch.long))[1][0, 0]
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    assert float(exact) - float(ours) > 5e-3


@pytest.mark.parametrize(
    ("field", "value"), [("beta", 0.04), ("num_iterations", 2), ("scale_rewards", "group"), ("scale_rewards", "batch")]
)
def test_gtpo_refuses_settings_its_definition_excludes(field: str, value: object) -> None:
    from pydantic import ValidationError

    from training.engine.config import GRPOConfig

    with pytest.raises(ValidationError) as caught:
        GRPOConfig.model_validate({"variant": "gtpo", "scale_rewards": "none", field: value})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,)
    GRPOConfig.model_validate({"variant": "none", "scale_rewards": "none", field: value})  # fine without GTPO
