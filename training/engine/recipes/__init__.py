"""Recipe name -> implementation, imported lazily so a run loads only the torch code it uses."""

from __future__ import annotations

import importlib

from training.engine.recipes.base import Recipe, RunContext

_IMPLEMENTATIONS: dict[str, str] = {
    "demo": "training.engine.recipes.sft:DemoRecipe",
    "sft": "training.engine.recipes.sft:SFTRecipe",
    "reward_model": "training.engine.recipes.preference:RewardModelRecipe",
    "dpo": "training.engine.recipes.preference:DPORecipe",
    "reward_regression": "training.engine.recipes.scores:ScoreRewardRecipe",
    "process_reward_model": "training.engine.recipes.scores:ScoreRewardRecipe",
    "rubric_judge": "training.engine.recipes.scores:RubricJudgeRecipe",
    "grpo": "training.engine.recipes.grpo:GRPORecipe",
    "demo_grpo": "training.engine.recipes.grpo:GRPORecipe",
}


def build_recipe(ctx: RunContext) -> Recipe:
    """Construct the recipe the spec names (models loaded, data read)."""
    module_name, _, class_name = _IMPLEMENTATIONS[ctx.spec.recipe].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    recipe: Recipe = cls(ctx)
    return recipe
