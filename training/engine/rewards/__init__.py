"""Rewards for GRPO: verifiers registered by name, model-based rewards, and their weighted combination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from training.engine.data import PromptExample


class RewardFunc(Protocol):
    """Scores each completion; ``examples[i]`` is the prompt row completion i was sampled for."""

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
        """One reward per completion."""
        ...


@dataclass
class RewardBreakdown:
    """The weighted total per completion and each function's own (unweighted) values."""

    total: torch.Tensor
    per_func: dict[str, torch.Tensor]


class CombinedReward:
    """Σ_k w_k · r_k(completion): several reward functions combined with weights (TRL's reward_weights)."""

    def __init__(self, funcs: Sequence[tuple[str, RewardFunc]], weights: Sequence[float] = ()) -> None:
        if weights and len(weights) != len(funcs):
            raise ValueError(f"{len(weights)} reward weights given for {len(funcs)} reward functions")
        self.funcs = list(funcs)
        self.weights = list(weights) if weights else [1.0] * len(funcs)

    def __call__(self, completions: Sequence[str], examples: Sequence[PromptExample]) -> RewardBreakdown:
        """Score every completion with every function and sum with the weights."""
        per_func: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions))
        for (name, func), weight in zip(self.funcs, self.weights, strict=True):
            values = torch.tensor(func(completions, examples), dtype=torch.float32)
            per_func[name] = values
            total += weight * values
        return RewardBreakdown(total=total, per_func=per_func)
