"""Loss functions of the recipes, each with its formula and the paper it comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, num_items_in_batch: float | None = None
) -> tuple[torch.Tensor, float]:
    """Next-token cross-entropy, mean over labelled tokens: L = -1/N Σ_t log p(y_t | y_<t).

    ``labels`` are aligned with ``logits`` (same length, IGNORE where no loss is taken); the shift happens here.
    N is this batch's labelled tokens, or ``num_items_in_batch`` when given: the tokens of the whole
    accumulated batch, so that micro-batch losses add up to the batch's mean (transformers' ForCausalLMLoss,
    which TRL's SFTTrainer uses). Returns the loss and the mean token accuracy of this batch.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    flat_logits, flat_labels = shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1)
    if num_items_in_batch is None:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)
    else:
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE, reduction="sum") / num_items_in_batch
    with torch.no_grad():
        mask = shift_labels != IGNORE
        correct = (shift_logits.argmax(-1) == shift_labels) & mask
        accuracy = float(correct.sum()) / max(1, int(mask.sum()))
    return loss, accuracy


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO, sigmoid form (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7).

    h = (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))
    L = -[(1 - ε) log σ(β h) + ε log σ(-β h)]   (ε = label smoothing: conservative DPO, Mitchell 2023)

    Inputs are summed completion log-probabilities per pair, shape (B,). Returns the mean loss and the implicit
    rewards β(log π - log π_ref) of the chosen and rejected completions (TRL's rewards/chosen|rejected).
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    logits = chosen_rewards - rejected_rewards
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *, center_coefficient: float = 0.0
) -> torch.Tensor:
    """Bradley-Terry pairwise loss of a reward model (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1).

    L = -mean log σ(r_w - r_l)  +  c · mean (r_w + r_l)^2
    The second term (Eisenstein et al. 2023, as TRL's center_rewards_coefficient) pins rewards near zero mean.
    """
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


def group_advantages(
    rewards: torch.Tensor, *, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, GRPO outcome supervision).

    A_i = (r_i - mean(r_group)) / (std + eps), std being
    - "group": the std of r_i's own group of G samples (GRPO);
    - "batch": the std of all rewards in the batch (Hu et al. 2025, REINFORCE++-style robust scaling);
    - "none":  no division (Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr. GRPO).
    Std is the unbiased estimate, as in TRL. ``rewards`` has shape (B·G,), groups contiguous.
    """
    grouped = rewards.view(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True).expand_as(grouped).reshape(-1)
        return centred / (std + eps)
    if scale == "batch":
        return centred / (rewards.std() + eps)
    if scale == "none":
        return centred
    raise ValueError(f"unknown advantage scaling {scale!r}")


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π || π_ref) (Schulman 2020, "Approximating KL Divergence"; used by GRPO).

    k3 = exp(log π_ref - log π) - (log π_ref - log π) - 1   (unbiased, always >= 0)
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1.0


def clipped_token_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    epsilon_low: float,
    epsilon_high: float,
    log_ratio: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token with asymmetric clipping (Schulman 2017; DAPO's clip-higher, Yu et al. 2025).

    r_t = exp(log π(o_t) - log π_old(o_t)),  ℓ_t = -min(r_t A, clip(r_t, 1 - ε_low, 1 + ε_high) A)
    ``advantages`` is per sequence (B,) and broadcast over tokens (B, T). ``log_ratio``, when given, replaces
    log π - log π_old (GRPO-Guard passes its normalised one). Returns (ℓ, r).
    """
    if log_ratio is None:
        log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
    return -torch.min(unclipped, clipped), ratio


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str,
    max_completion_length: int,
    num_items_in_batch: float | None = None,
) -> torch.Tensor:
    """Reduce (B, T) token losses to a scalar the way TRL's ``loss_type`` does.

    - grpo:    1/B Σ_i (1/|o_i|) Σ_t ℓ_it          per-sequence mean, then mean (Shao et al. 2024)
    - bnpo:    Σ_it ℓ_it / Σ_it m_it                tokens of this (micro-)batch
    - dr_grpo: Σ_it ℓ_it / (B · L_max)              a constant normaliser: no length bias (Liu et al. 2025)
    - dapo:    Σ_it ℓ_it / N_gen                     N_gen = tokens in the whole generation batch, across
                                                     micro-batches and processes (Yu et al. 2025, DAPO; TRL's default)
    """
    m = mask.to(per_token_loss.dtype)
    masked = per_token_loss * m
    if loss_type == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / m.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if loss_type == "dapo":
        denominator = num_items_in_batch if num_items_in_batch is not None else float(m.sum())
        return masked.sum() / max(denominator, 1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def clip_ratio_metrics(
    ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, epsilon_low: float, epsilon_high: float
) -> dict[str, float]:
    """Where clipping is active, in TRL 1.16's keys and formulas (GRPOTrainer._compute_loss).

    Low: r < 1 - ε_low with A < 0; high: r > 1 + ε_high with A > 0 (where the clip stops the gradient).
    clip_ratio/{low,high,region}_mean: fraction of the batch's real tokens; clip_ratio/low_min: the smallest
    per-completion fraction of low-clipped tokens, clip_ratio/high_max: the largest of high-clipped ones
    (completions with no tokens left out, as TRL's nanmin/nanmax do).
    """
    adv = advantages.unsqueeze(-1)
    valid = mask.bool()
    low = (ratio < 1.0 - epsilon_low) & (adv < 0) & valid
    high = (ratio > 1.0 + epsilon_high) & (adv > 0) & valid
    n = max(1, int(valid.sum()))
    per_row = valid.sum(-1)
    has_tokens = per_row > 0
    low_rows = low.sum(-1)[has_tokens].float() / per_row[has_tokens]
    high_rows = high.sum(-1)[has_tokens].float() / per_row[has_tokens]
    return {
        "clip_ratio/low_mean": float(low.sum()) / n,
        "clip_ratio/high_mean": float(high.sum()) / n,
        "clip_ratio/region_mean": float((low | high).sum()) / n,
        "clip_ratio/low_min": float(low_rows.min()) if low_rows.numel() else float("nan"),
        "clip_ratio/high_max": float(high_rows.max()) if high_rows.numel() else float("nan"),
    }


# GTPO as its authors define it. Reference: github.com/winstonsmith1897/GTPO, gtpo/gtpo_training.py at commit
# 5d33811 (the code behind Simoni, Fontana, Rossolini, Saracino 2025, "GTPO: Trajectory-Based Policy Optimization in
# Large Language Models", arXiv 2508.03772). Their constants: ENT_THRESHOLD = 0.7, ENT_SCALE = 0.1, W_RAW = 2.0,
# EPS = 1e-6. tests/engine/test_gtpo_reference.py holds a transcription of their functions and checks these
# against it on fixed tensors.
GTPO_ENTROPY_EPS = 1e-6


@dataclass
class GTPOConflicts:
    """What ``gtpo_conflict_weights`` finds, per completion of a generation batch."""

    weights: torch.Tensor  # (N, T) their delta: 0 / boost on conflict tokens of negative / positive completions, else 1
    conflict: torch.Tensor  # (N, T) bool: conflict tokens (shared prefix or suffix run), False for zero-advantage rows
    count: torch.Tensor  # (N,) their n_conflict per completion, at least 1 (clamped as their loss does)


def gtpo_conflict_weights(
    completion_ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *, group_size: int, boost: float
) -> GTPOConflicts:
    """GTPO's conflict tokens and token weights: ``build_conflict_mask`` in the authors' gtpo/gtpo_training.py.

    Within a group, take the completions with A ≠ 0. A token o_it "matches" when the same id sits at the same
    position t in some positive-advantage completion and in some negative one (o_i itself counts).
    - Forward: the conflict tokens are the leading run of matches from t = 0 (a shared prefix), not every match.
    - Backward: the same with positions counted from each completion's end (a shared suffix: closing format).
    - δ_it = w_fwd · w_bwd, each w = boost (W_RAW) on a conflict token of a positive completion, 0 on one of a
      negative completion, 1 elsewhere (so a token in both runs of a positive completion weighs boost²).
    - n_i, the count that normalises the completion's loss, is what their code counts: the union of the forward
      run and the backward run *in the backward run's reversed coordinates* (index = distance from the end), so
      n_i = max(prefix run, suffix run), not their sum. We follow the code; ``conflict`` holds the true tokens.
    Completions with A = 0 keep δ = 1 and count no conflicts. Their code tells real tokens from padding by
    ``ids != PAD_ID`` and ``mask.sum``; here the completion mask does both (the same under right padding).
    """
    n, t = completion_ids.shape
    valid = mask.bool()
    lengths = valid.sum(1)
    active = advantages != 0
    positive = (advantages > 0).view(-1, 1, group_size, 1)
    negative = (advantages < 0).view(-1, 1, group_size, 1)
    steps = torch.arange(t, device=completion_ids.device).unsqueeze(0)

    def leading_matches(ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # padding gets an id no token has: a real token never matches padding
        grouped = torch.where(real, ids, torch.full_like(ids, -1)).view(-1, group_size, t)
        same = grouped.unsqueeze(2) == grouped.unsqueeze(1)  # [g, i, j, t]: i and j hold the same id at t
        matches = (same & positive).any(dim=2) & (same & negative).any(dim=2)
        run = torch.cumprod(matches.view(n, t).to(torch.int32), dim=1).bool()  # the leading run only
        return run & real

    conflict_fwd = leading_matches(completion_ids, valid)
    # Reverse each completion's real tokens in place (position s = distance from its last token).
    rev_index = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)
    rev_real = steps < lengths.unsqueeze(1)
    conflict_bwd_rev = leading_matches(completion_ids.gather(1, rev_index), rev_real)
    conflict_bwd = conflict_bwd_rev.gather(1, rev_index) & valid  # back to forward positions

    pos_row = (advantages > 0).unsqueeze(1)

    def run_weights(conflict: torch.Tensor) -> torch.Tensor:
        on_conflict = torch.where(pos_row, torch.full_like(conflict, boost, dtype=torch.float32), 0.0)
        return torch.where(conflict, on_conflict, torch.ones_like(on_conflict))

    m = mask.to(torch.float32)
    weights = run_weights(conflict_fwd) * run_weights(conflict_bwd) * m
    conflict = (conflict_fwd | conflict_bwd) & valid & active.unsqueeze(1)
    weights = torch.where(active.unsqueeze(1), weights, m)
    counted = (conflict_fwd | conflict_bwd_rev) & valid & active.unsqueeze(1)  # their total_conflict, as written
    count = counted.sum(1).clamp(min=1)
    return GTPOConflicts(weights=weights, conflict=conflict, count=count)


def gtpo_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy as GTPO's ``compute_completion_stats`` computes it: H = -Σ_v p_v log max(p_v, 1e-6).

    The clamp is theirs (it differs from the exact entropy only through tokens below probability 1e-6).
    (B, T, V) -> (B, T), without gradient: in their code the entropy only reshapes the advantage.
    """
    with torch.no_grad():
        probs = torch.softmax(logits.float(), dim=-1)
        return -(probs * torch.log(probs.clamp_min(GTPO_ENTROPY_EPS))).sum(-1)


def gtpo_shaped_advantages(
    advantages: torch.Tensor, mean_entropy: torch.Tensor, *, threshold: float, penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO's entropy filter and penalty (``UnslothEfficientGTPO.forward``, "entropy shaping" in their code).

    H̄_i = mean over o_i's tokens of the entropy;  A'_i = A_i - γ H̄_i if H̄_i <= τ, else 0
    (τ = ENT_THRESHOLD = 0.7 nats, γ = ENT_SCALE = 0.1 in their code). A dropped completion contributes nothing;
    a kept one, even with A_i = 0, is pushed down by its entropy. Their README writes the filter as δ_i with a
    ln 2 threshold that also depends on the initial entropy; their code, followed here, uses the fixed τ.
    Returns (A', kept mask as floats).
    """
    keep = mean_entropy <= threshold
    shaped = torch.where(keep, advantages - penalty * mean_entropy, torch.zeros_like(advantages))
    return shaped, keep.float()


def gtpo_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, conflicts: GTPOConflicts) -> torch.Tensor:
    """GTPO's reduction (``gtpo_compute_loss`` then the sum over completions in ``UnslothEfficientGTPO``):

    L = Σ_i (1 / n_i) (1 / |o_i|) Σ_t δ_it ℓ_it
    with ℓ_it = -r_it A'_i (r = exp(log π - sg(log π)) = 1 in value: one pass per generation batch), δ and n from
    ``gtpo_conflict_weights``. A sum over the batch's completions, as their code computes it (their README's
    formula writes a mean over the G completions of a group: a constant factor Adam absorbs).
    """
    m = mask.to(per_token_loss.dtype)
    per_completion = (per_token_loss * conflicts.weights * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return (per_completion / conflicts.count.to(per_token_loss.dtype)).sum()


def guard_normalised_log_ratio(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Ratio normalisation in the spirit of GRPO-Guard (Wang et al. 2025, "GRPO-Guard: Mitigating Implicit
    Over-Optimization in Flow Matching via Regulated Clipping").

    ADAPTATION, not the paper's method: GRPO-Guard is defined for flow-matching image models, where the
    per-denoising-step log-ratio has a step-dependent mean shift that makes PPO clipping one-sided; its
    RatioNorm re-centres the ratio distribution of each step. For a language model we treat the token
    position as the analogue of the denoising step and re-centre the log-ratio over the batch's real
    tokens at each position, with the mean detached so the gradient of each token is unchanged:
        ρ_it = log π(o_it) - log π_old(o_it),   ρ̂_it = ρ_it - sg( Σ_j m_jt ρ_jt / Σ_j m_jt )
    so exp(ρ̂) is centred at 1 at every position and both clip bounds bind symmetrically.
    (With one optimiser pass per generation batch ρ ≡ 0 and this is the identity.)
    """
    log_ratio = logps - old_logps
    m = mask.to(log_ratio.dtype)
    centre = (log_ratio.detach() * m).sum(0, keepdim=True) / m.sum(0, keepdim=True).clamp(min=1.0)
    return (log_ratio - centre) * m


def vllm_importance_sampling_ratio(
    trainer_logps: torch.Tensor,
    sampling_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> torch.Tensor:
    """The weight that corrects for sampling with vLLM rather than the trained model, as TRL computes it
    (huggingface/trl trl/trainer/grpo_trainer.py, _generate_and_score_completions, at f2cd577 of 2026-07-24;
    the same lines in TRL 1.16): with δ = (log π_trainer - log π_vLLM)·m per token,

        token_*:    ρ_it = exp(δ_it)                      (B, T)
        sequence_*: ρ_i  = exp(Σ_t δ_it)                  (B, 1)
        *_truncate: ρ ← clamp(ρ, C_min, C_max)            (token_truncate with C_min empty is TIS, Yao et al. 2025)
        *_mask:     ρ ← 0 where ρ < C_min or ρ > C_max

    ``trainer_logps`` are π_old's (the weights that sampled, computed by the trainer), ``sampling_logps`` vLLM's
    processed log-probs of the same tokens (logprobs_mode="processed_logprobs": after temperature and top-p,
    like the trainer's). The per-token loss is multiplied by ρ (before the KL term is added), as TRL does.
    """
    diff = (trainer_logps - sampling_logps) * mask
    if mode.startswith("sequence_"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("_truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    if mode.endswith("_mask"):
        low = clip_min if clip_min is not None else -math.inf
        high = clip_max if clip_max is not None else math.inf
        return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)
    raise ValueError(f"unknown vLLM importance sampling mode {mode!r}")
