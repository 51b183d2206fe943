"""Build the combined reward a GRPO config names."""

from __future__ import annotations

import torch

from training.engine.config import GRPOConfig
from training.engine.rewards import CombinedReward, RewardFunc
from training.engine.rewards.verifiers import VERIFIERS


def build_reward(config: GRPOConfig, *, device: torch.device) -> CombinedReward:
    """One function per name in ``config.reward_funcs``, weighted by ``config.reward_weights``."""
    funcs: list[tuple[str, RewardFunc]] = []
    for name in config.reward_funcs:
        if name in VERIFIERS:
            funcs.append((name, VERIFIERS[name](config.reward_regex)))
        elif name == "reward_model":
            if not config.reward_model_path:
                raise ValueError("reward_funcs includes 'reward_model' but reward_model_path is empty")
            from training.engine.rewards.models import RewardModelReward

            funcs.append((name, RewardModelReward(config.reward_model_path, device=device)))
        elif name == "rubric_judge":
            if not config.rubric_judge_path:
                raise ValueError("reward_funcs includes 'rubric_judge' but rubric_judge_path is empty")
            from training.engine.rewards.models import RubricJudge

            funcs.append((name, RubricJudge(config.rubric_judge_path, device=device)))
        elif name == "cup":
            if not config.process_reward_model_path:
                raise ValueError("reward_funcs includes 'cup' but process_reward_model_path is empty")
            from training.engine.rewards.models import CompletionUnderPolicy, ProcessRewardModel

            prm = ProcessRewardModel(config.process_reward_model_path, device=device)
            funcs.append((name, CompletionUnderPolicy(prm)))
        else:
            raise ValueError(f"unknown reward function {name!r}")
    return CombinedReward(funcs, config.reward_weights)
