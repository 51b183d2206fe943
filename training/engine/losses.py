"""Loss functions of the recipes, each with its formula and the paper it comes from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Next-token cross-entropy, mean over labelled tokens: L = -1/N Σ_t log p(y_t | y_<t).

    ``labels`` are aligned with ``logits`` (same length, IGNORE where no loss is taken); the shift happens here.
    Returns the loss and the mean token accuracy.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=IGNORE
    )
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
    """Fraction of tokens where clipping is active, in TRL's keys clip_ratio/{low_mean,high_mean,region_mean}.

    Low: r < 1 - ε_low with A < 0; high: r > 1 + ε_high with A > 0 (where the clip stops the gradient).
    """
    adv = advantages.unsqueeze(-1)
    low = (ratio < 1.0 - epsilon_low) & (adv < 0)
    high = (ratio > 1.0 + epsilon_high) & (adv > 0)
    valid = mask.bool()
    n = max(1, int(valid.sum()))
    return {
        "clip_ratio/low_mean": float((low & valid).sum()) / n,
        "clip_ratio/high_mean": float((high & valid).sum()) / n,
        "clip_ratio/region_mean": float(((low | high) & valid).sum()) / n,
    }


def gtpo_conflict_mask(
    completion_ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *, group_size: int
) -> torch.Tensor:
    """GTPO conflict tokens (Simoni et al. 2025, "GTPO: Trajectory-Based Policy Optimization in LLMs").

    Within a group, token o_it is a conflict token when the same token id sits at the same position t in at
    least one positive-advantage completion and at least one negative-advantage completion of the group:
    conflict_it = m_it ∧ ∃j: A_j > 0, o_jt = o_it, m_jt ∧ ∃k: A_k < 0, o_kt = o_it, m_kt.
    Such tokens (often shared formatting) get opposite pushes from GRPO; GTPO protects them. Shape (B·G, T).
    """
    b, t = completion_ids.shape
    ids = completion_ids.view(-1, group_size, t)
    valid = mask.bool().view(-1, group_size, t)
    adv = advantages.view(-1, group_size)
    # same[g, i, j, t]: completions i and j of group g hold the same token at position t (both real tokens)
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    positive = (adv > 0).view(-1, 1, group_size, 1)
    negative = (adv < 0).view(-1, 1, group_size, 1)
    shared_with_pos = (same & positive).any(dim=2)
    shared_with_neg = (same & negative).any(dim=2)
    return (shared_with_pos & shared_with_neg & valid).view(b, t)


def gtpo_token_weights(conflict: torch.Tensor, advantages: torch.Tensor, *, boost: float) -> torch.Tensor:
    """GTPO per-token weights: conflict tokens are shielded from negative updates and amplified in positive ones.

    w_it = 0 if conflict_it and A_i < 0;  w_it = boost if conflict_it and A_i > 0;  else 1.
    """
    adv = advantages.unsqueeze(-1).expand_as(conflict)
    weights = torch.ones_like(conflict, dtype=torch.float32)
    weights = torch.where(conflict & (adv < 0), torch.zeros_like(weights), weights)
    return torch.where(conflict & (adv > 0), torch.full_like(weights, boost), weights)


def gtpo_entropy_keep(mean_entropy: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """GTPO's entropy filter (Simoni et al. 2025, "GTPO: Trajectory-Based Policy Optimization in LLMs").

    H̄_i = (1/|o_i|) Σ_t H(π(· | q, o_i,<t)),   keep_i = [H̄_i <= τ]
    High-entropy completions are the ones GTPO finds driving policy collapse; dropping them replaces the KL
    term and lets GTPO run without a reference model. Returns a (B·G,) float mask of kept completions.
    """
    return (mean_entropy <= threshold).float()


def gtpo_relative_threshold(mean_entropy: torch.Tensor, *, quantile: float) -> float:
    """τ = Q_q({H̄_j}): the q-quantile (linear interpolation) of the batch's completion entropies.

    Our default in place of a fixed τ. The GTPO authors' code uses τ = 0.7 nats, a value for pretrained LLMs
    whose typical completion entropy lies far below the maximum ln|V|. A randomly initialised or warm-starting
    model sits near ln|V| on every completion, where a fixed τ (or one like ln|V| / 2) drops the whole batch
    and GTPO silently stops learning. A quantile always keeps the more certain completions and drops the most
    uncertain ~(1 - q) of them (none when all entropies are equal); q = 1 (the maximum) keeps all.
    """
    return float(torch.quantile(mean_entropy.detach().float(), quantile))


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
