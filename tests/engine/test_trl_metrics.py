"""reward_std, frac_reward_zero_std and the clip_ratio metrics equal TRL 1.16's on fixed tensors.

The reference is a transcription of trl/trainer/grpo_trainer.py (TRL 1.16.0): the reward statistics of
``GRPOTrainer._generate_and_score_completions`` ("sum_then_normalize") and the clip metrics at the end of
``GRPOTrainer._compute_loss``, on one process (gather = identity). Its helpers nanstd / nanmin / nanmax are
TRL's own when TRL is installed (requirements/bench.txt), else transcribed from trl/trainer/utils.py.
"""

from __future__ import annotations

import pytest
import torch

from training.engine.losses import clip_ratio_metrics
from training.engine.recipes.grpo import reward_spread_metrics

try:
    from trl.trainer.utils import nanmax, nanmin, nanstd
except ImportError:  # transcribed from trl/trainer/utils.py (1.16.0)

    def nanstd(tensor: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
        mean = torch.nanmean(tensor, dim=dim, keepdim=True)
        variance = torch.nanmean((tensor - mean) ** 2, dim=dim, keepdim=True)
        count = torch.sum(~torch.isnan(tensor), dim=dim, keepdim=True)
        correction = count / (count - 1)
        correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
        variance *= correction
        std = torch.sqrt(variance)
        return std if keepdim else std.squeeze(dim) if dim is not None else std.squeeze()

    def nanmin(tensor: torch.Tensor) -> torch.Tensor:
        if torch.isnan(tensor).all():
            return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
        return torch.min(tensor[~torch.isnan(tensor)])

    def nanmax(tensor: torch.Tensor) -> torch.Tensor:
        if torch.isnan(tensor).all():
            return torch.tensor(float("nan"), dtype=tensor.dtype, device=tensor.device)
        return torch.max(tensor[~torch.isnan(tensor)])


def trl_reward_metrics(rewards: torch.Tensor, num_generations: int, scale_rewards: str) -> dict[str, float]:
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    else:
        std_rewards = nanstd(rewards).expand_as(rewards)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return {"reward_std": nanstd(rewards).item(), "frac_reward_zero_std": is_std_zero.float().mean().item()}


def trl_clip_metrics(
    coef_1: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> dict[str, float]:
    advantages = advantages.unsqueeze(1)

    def masked_seq_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum(-1) / mask.sum(-1)

    def global_masked_mean(x: torch.Tensor) -> float:
        local_sum, local_count = (x * mask).sum(), mask.sum().float()
        return (local_sum / local_count.clamp(min=1.0)).item()

    is_low_clipped = (coef_1 < 1 - epsilon_low) & (advantages < 0)
    is_high_clipped = (coef_1 > 1 + epsilon_high) & (advantages > 0)
    is_region_clipped = is_low_clipped | is_high_clipped
    return {
        "clip_ratio/low_mean": global_masked_mean(is_low_clipped.float()),
        "clip_ratio/high_mean": global_masked_mean(is_high_clipped.float()),
        "clip_ratio/region_mean": global_masked_mean(is_region_clipped.float()),
        "clip_ratio/low_min": nanmin(masked_seq_mean(is_low_clipped.float())).item(),
        "clip_ratio/high_max": nanmax(masked_seq_mean(is_high_clipped.float())).item(),
    }


# 4 groups of 4: one tied at 1, one tied at 0, two spread (a mean of group stds != the batch std)
REWARDS = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 2.0, 3.0, -1.0, 0.0, 0.25])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_reward_std_and_zero_std_share_equal_trl(scale: str) -> None:
    ours = reward_spread_metrics(REWARDS, group_size=4, scale=scale)
    theirs = trl_reward_metrics(REWARDS, 4, scale)
    assert ours == pytest.approx(theirs, rel=1e-6)
    mean_of_group_stds = float(REWARDS.view(-1, 4).std(dim=1).mean())
    assert abs(ours["reward_std"] - mean_of_group_stds) > 0.1  # the old definition would not pass


def test_zero_std_share_counts_tied_groups() -> None:
    assert reward_spread_metrics(REWARDS, group_size=4, scale="group")["frac_reward_zero_std"] == 0.5
    assert reward_spread_metrics(REWARDS, group_size=4, scale="batch")["frac_reward_zero_std"] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_ratio_metrics_equal_trl(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, t = 12, 9
    ratio = torch.exp(torch.randn((n, t), generator=gen) * 0.3)
    advantages = torch.randn((n,), generator=gen)
    advantages[:3] = 0.0
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    ours = clip_ratio_metrics(ratio, advantages, mask, epsilon_low=0.2, epsilon_high=0.28)
    theirs = trl_clip_metrics(ratio, advantages, mask, 0.2, 0.28)
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert theirs["clip_ratio/high_max"] > 0 and theirs["clip_ratio/low_mean"] > 0  # the tensors do clip
