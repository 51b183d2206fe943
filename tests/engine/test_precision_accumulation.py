"""Gradient accumulation gives the whole batch's gradient; bf16 autocast trains float32 master weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from training.engine.checkpoints import load_trainer_state
from training.engine.config import SFTConfig
from training.engine.distributed import DistInfo
from training.engine.recipes import build_recipe
from training.engine.recipes.base import Recipe, RunContext, run_training, seed_step
from training.engine.recipes.grpo import GRPORecipe
from training.engine.spec import RunSpec

from .conftest import TINY

GRPO = {
    "batch_size": 4,
    "num_generations": 4,
    "max_new_tokens": 3,
    "max_length": 16,
    "reward_funcs": ["regex", "numeric_answer"],
    "reward_regex": "[0-9].*",  # a random model starts with a digit often enough for groups to disagree
}


def step_gradients(recipe: Recipe, step: int = 1) -> dict[str, torch.Tensor]:
    """The gradient one training step leaves on every trained parameter (the recipe's random stream seeded)."""
    seed_step(0, step)
    recipe.train_step(step)
    return {n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.grad is not None}


def assert_same_gradients(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    assert one.keys() == other.keys() and one
    assert any(float(g.abs().sum()) > 0 for g in one.values())  # a real signal, not two zero gradients
    for name, grad in one.items():
        torch.testing.assert_close(other[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    ("recipe", "options"),
    [
        ("sft", {"batch_size": 8}),
        ("reward_model", {"batch_size": 8, "center_rewards_coefficient": 0.1}),
        ("dpo", {"batch_size": 8}),
        ("grpo", {**GRPO, "loss_type": "dapo", "beta": 0.05}),
        ("grpo", {**GRPO, "loss_type": "grpo"}),
        ("grpo", {**GRPO, "loss_type": "dr_grpo", "scale_rewards": "none"}),
        ("grpo", {**GRPO, "variant": "gtpo", "scale_rewards": "none", "gtpo_entropy_threshold": 20.0}),
        ("grpo", {**GRPO, "sft_warmup_steps": 1}),  # the SFT warm start accumulates as SFT does
    ],
    ids=["sft", "reward_model", "dpo", "grpo-dapo-kl", "grpo-grpo", "grpo-dr_grpo", "grpo-gtpo", "grpo-warm-start"],
)
def test_k_micro_batches_give_the_gradient_of_one_batch(
    context_factory: Any, recipe: str, options: dict[str, Any]
) -> None:
    """k micro-batches of b/k examples, accumulated, give the gradient of one batch of b (TRL's normalisation:
    SFT by the step's token count, pair losses and grpo/dr_grpo divided by k, dapo by the generation batch's
    tokens; bnpo is left out: TRL normalises it by each micro-batch's own tokens, by design not the same)."""
    whole = build_recipe(context_factory(recipe, {**options, "max_steps": 1}, out="whole")[0])
    if isinstance(whole, GRPORecipe):  # a batch whose groups all tie would compare two zero gradients
        assert whole.config.sft_warmup_steps or bool(whole._generate(1).advantages.abs().sum() > 0)
    expected = step_gradients(whole)
    for k in (2, 4):
        config = {**options, "max_steps": 1, "gradient_accumulation_steps": k}
        accumulated = build_recipe(context_factory(recipe, config, out=f"k{k}")[0])
        assert_same_gradients(expected, step_gradients(accumulated))


def test_accumulated_dpo_metrics_equal_the_whole_batch(context_factory: Any) -> None:
    whole = build_recipe(context_factory("dpo", {"batch_size": 8, "max_steps": 1}, out="whole")[0])
    split = build_recipe(
        context_factory("dpo", {"batch_size": 8, "max_steps": 1, "gradient_accumulation_steps": 4}, out="split")[0]
    )
    # One step in, so the policy differs from the reference and every metric is non-trivial.
    for recipe in (whole, split):
        step_gradients(recipe)
        torch.optim.SGD(recipe.model.parameters(), lr=1.0).step()
        recipe.model.zero_grad(set_to_none=True)
    seed_step(0, 2)
    expected = whole.train_step(2)
    seed_step(0, 2)
    found = split.train_step(2)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_accumulation_that_does_not_divide_the_batch_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        SFTConfig.model_validate({"batch_size": 6, "gradient_accumulation_steps": 4})
    (error,) = caught.value.errors()
    assert error["loc"] == ("gradient_accumulation_steps",)
    assert "divide batch_size (6)" in error["msg"]
    SFTConfig.model_validate({"batch_size": 8, "gradient_accumulation_steps": 4})


def test_batch_that_does_not_split_over_processes_and_micro_batches_is_refused(tmp_path: Path) -> None:
    """batch_size is the global batch: 2 processes x 4 micro-batches need a multiple of 8."""
    config = {**TINY, "batch_size": 12, "gradient_accumulation_steps": 4}
    spec = RunSpec(recipe="sft", config=config, output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match="does not split into 2 process"):
        RunContext.create(spec=spec, reporter=None, dist=DistInfo(rank=0, world_size=2))  # type: ignore[arg-type]
    RunContext.create(spec=spec, reporter=None, dist=DistInfo())  # type: ignore[arg-type]  # 12 = 4 x 3 alone


def test_rank_batch_size_is_a_share_of_the_global_batch(tmp_path: Path) -> None:
    spec = RunSpec(recipe="sft", config={**TINY, "batch_size": 16}, output_dir=str(tmp_path / "out"))
    ctx = RunContext.create(spec=spec, reporter=None, dist=DistInfo(rank=1, world_size=4))  # type: ignore[arg-type]
    assert ctx.rank_batch_size == 4


def test_bf16_autocast_trains_float32_master_weights_that_a_small_step_moves(context_factory: Any) -> None:
    """dtype bfloat16: matmuls run in bf16, but weights, gradients and AdamW state are float32, so one AdamW
    step at lr 1e-5 moves the weights (stored in bf16, a step of 1e-5 rounds back for any weight above ~5e-3)."""
    ctx, _ = context_factory(
        "sft", {"dtype": "bfloat16", "learning_rate": 1e-5, "max_steps": 1, "sample_table_steps": 0}
    )
    recipe = build_recipe(ctx)
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    seen: list[torch.dtype] = []
    layer = recipe.model.model.layers[0].mlp.down_proj  # type: ignore[union-attr]
    hook = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    run_training(recipe)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the forward ran under autocast
    weights = [(n, p) for n, p in recipe.model.named_parameters() if p.dim() == 2]
    for name, param in weights:
        assert param.dtype == torch.float32, name
        big = before[name].abs() > 5e-3
        moved = (param.detach() != before[name])[big].float().mean()
        assert float(moved) > 0.9, name  # AdamW's first step moves each weight by ~lr: visible in float32
    state = load_trainer_state(ctx.output_dir / "checkpoint-1")["optimizer"]["state"]
    assert {value["exp_avg"].dtype for value in state.values()} == {torch.float32}
    assert {value["exp_avg_sq"].dtype for value in state.values()} == {torch.float32}
