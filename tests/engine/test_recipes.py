"""A few real steps of each recipe move its loss the right way, and log the metric names the dashboard expects."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training, seed_step
from training.engine.recipes.grpo import GRPORecipe


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def test_sft_loss_falls(context_factory: Any) -> None:
    ctx, reporter = context_factory("sft", {"max_steps": 30, "learning_rate": 3e-3, "save_steps": 100})
    run_training(build_recipe(ctx))
    loss = reporter.series("loss")
    assert mean(loss[-5:]) < mean(loss[:5]) - 0.5


def test_reward_model_learns_preferences(context_factory: Any) -> None:
    ctx, reporter = context_factory("reward_model", {"max_steps": 20, "learning_rate": 1e-3, "save_steps": 100})
    run_training(build_recipe(ctx))
    assert mean(reporter.series("loss")[-3:]) < reporter.series("loss")[0]
    assert reporter.series("accuracy")[-1] == 1.0
    assert reporter.series("margin")[-1] > reporter.series("margin")[0]


def test_dpo_loss_falls_and_logs_trl_names(context_factory: Any) -> None:
    ctx, reporter = context_factory("dpo", {"max_steps": 15, "learning_rate": 1e-3, "save_steps": 100})
    run_training(build_recipe(ctx))
    loss = reporter.series("loss")
    assert loss[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the start
    assert loss[-1] < 0.6
    last = reporter.metrics[-1][1]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"):
        assert key in last
    assert last["rewards/margins"] > 0


GRPO_BASE = {
    "batch_size": 4,
    "num_generations": 4,
    "max_new_tokens": 3,
    "learning_rate": 5e-3,
    "save_steps": 100,
    "max_length": 16,
    "reward_funcs": ["regex", "numeric_answer"],
    "reward_regex": "[0-9].*",  # a random model starts with a digit often enough for groups to disagree
}


def advantage_weighted_logp(recipe: GRPORecipe) -> float:
    """Σ_i A_i · mean_t log π(o_it) on the recipe's current generation batch: what a GRPO step must raise."""
    assert recipe.batch is not None
    with torch.no_grad():
        logps, _ = recipe._logps(recipe.model, recipe.batch)
    mask = recipe.batch.completion_mask.float()
    per_seq = (logps * mask).sum(1) / mask.sum(1).clamp(min=1)
    return float((recipe.batch.advantages * per_seq).sum())


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "grpo", "scale_rewards": "group"},
        {"loss_type": "dr_grpo", "scale_rewards": "none"},
        {"loss_type": "dapo", "epsilon_high": 0.28, "beta": 0.05},
        {"loss_type": "bnpo", "scale_rewards": "batch"},
        {"variant": "gtpo", "scale_rewards": "none", "gtpo_entropy_threshold": 20.0},
        {"variant": "grpo_guard", "num_iterations": 2},
    ],
)
def test_grpo_step_raises_advantage_weighted_logprob(context_factory: Any, options: dict[str, Any]) -> None:
    ctx, _ = context_factory("grpo", {**GRPO_BASE, "max_steps": 1, **options})
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    optimizer = torch.optim.SGD(recipe.model.parameters(), lr=0.5)
    for attempt in range(1, 6):  # a batch where every group ties has zero advantages: sample another
        seed_step(0, attempt)
        recipe.batch = None
        metrics = recipe.train_step(attempt)
        if recipe.batch is not None and recipe.batch.advantages.abs().sum() > 0:
            break
    before = advantage_weighted_logp(recipe)
    optimizer.step()
    after = advantage_weighted_logp(recipe)
    assert after > before
    for key in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "entropy",
        "loss",
        "num_tokens",
        "completions/mean_length",
        "completions/clipped_ratio",
        "rewards/regex/mean",
        "rewards/numeric_answer/std",
    ):
        assert key in metrics
    if options.get("beta"):
        assert "kl" in metrics
    if options.get("variant") == "gtpo":  # one pass per batch, no clipping: TRL's clip metrics do not apply
        assert {"gtpo/kept_frac", "gtpo/filtered_ratio", "gtpo/conflict_frac"} <= metrics.keys()
    else:
        clip_keys = ("low_mean", "high_mean", "region_mean", "low_min", "high_max")
        assert {f"clip_ratio/{k}" for k in clip_keys} <= metrics.keys()


def test_gtpo_says_so_when_its_threshold_drops_every_completion(
    context_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The authors' 0.7-nat threshold suits pretrained LLMs; a random-init model sits near ln|V| on every
    completion, so everything is dropped: the step moves nothing, and the run's log says why."""
    ctx, _ = context_factory("grpo", {**GRPO_BASE, "max_steps": 1, "variant": "gtpo", "scale_rewards": "none"})
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    seed_step(0, 1)
    metrics = recipe.train_step(1)
    assert metrics["gtpo/kept_frac"] == 0.0
    grads = [p.grad for p in recipe.model.parameters() if p.grad is not None]
    assert all(float(g.abs().sum()) == 0.0 for g in grads)
    assert "GTPO dropped every completion" in capsys.readouterr().out


def test_gtpo_penalises_entropy_of_kept_completions_even_when_their_group_ties(context_factory: Any) -> None:
    """In GTPO a kept completion with A = 0 still gets A' = -γ H̄: a batch whose groups all tie moves the model
    (towards lower entropy); with γ = 0 it does not."""

    def grad_and_entropy(penalty: float) -> tuple[float, float, float]:
        config = {**GRPO_BASE, "max_steps": 1, "variant": "gtpo", "scale_rewards": "none"}
        ctx, _ = context_factory("grpo", {**config, "gtpo_entropy_threshold": 20.0, "gtpo_entropy_penalty": penalty})
        recipe = build_recipe(ctx)
        assert isinstance(recipe, GRPORecipe)
        seed_step(0, 1)
        batch = recipe._generate(1)
        batch.advantages = torch.zeros_like(batch.advantages)
        metrics = recipe._policy_step(batch)
        grad = sum(float(p.grad.abs().sum()) for p in recipe.model.parameters() if p.grad is not None)
        torch.optim.SGD(recipe.model.parameters(), lr=1.0).step()
        after = recipe._logps(recipe.model, batch)[1]
        mask = batch.completion_mask.float()
        return grad, metrics["entropy"], float((after * mask).sum() / mask.sum())

    grad, before, after = grad_and_entropy(0.1)
    assert grad > 0
    assert after < before
    assert grad_and_entropy(0.0)[0] == 0.0


def test_demo_grpo_raises_verifier_reward(context_factory: Any) -> None:
    """The quick-start demo in miniature: SFT warm start on noisy labels, then GRPO lifts exact-match reward."""
    ctx, reporter = context_factory(
        "demo_grpo",
        {
            "max_steps": 330,
            "sft_warmup_steps": 200,
            "tiny_hidden_size": 64,
            "tiny_num_layers": 2,
            "tiny_num_heads": 4,
            "save_steps": 1000,
        },
    )
    run_training(build_recipe(ctx))
    reward = reporter.series("rewards/numeric_answer/mean")
    assert mean(reward[-20:]) > mean(reward[:20]) + 0.15


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "dapo"},
        # GTPO without its entropy penalty: zero-advantage rows carry no gradient there either
        {"variant": "gtpo", "scale_rewards": "none", "gtpo_entropy_penalty": 0.0, "gtpo_entropy_threshold": 20.0},
        # with it, a kept A = 0 row has A' = -γ H̄: the shortcut must stand aside
        {"variant": "gtpo", "scale_rewards": "none", "gtpo_entropy_threshold": 20.0},
        {"variant": "grpo_guard", "num_iterations": 2},
    ],
)
def test_grpo_skips_backward_only_where_the_gradient_is_zero(
    context_factory: Any, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with advantage 0 get no autograd pass; the loss, gradient and metrics equal the full-batch pass."""
    ctx, _ = context_factory("grpo", {**GRPO_BASE, "max_steps": 1, **options})
    recipe = build_recipe(ctx)
    assert isinstance(recipe, GRPORecipe)
    seed_step(0, 1)
    batch = recipe._generate(1)
    batch.advantages = torch.tensor([1.0, -1.0, 0.0, 0.0] * 4)  # half the rows idle, half carrying signal

    def step() -> tuple[dict[str, float], torch.Tensor]:
        recipe.model.zero_grad(set_to_none=True)
        batch.old_logps = None
        metrics = recipe._policy_step(batch)
        grads = torch.cat([p.grad.flatten() for p in recipe.model.parameters() if p.grad is not None])
        return metrics, grads

    split_metrics, split_grads = step()
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "_policy_logps", lambda b: recipe._logps(recipe.model, b))
        full_metrics, full_grads = step()
    assert float(full_grads.abs().sum()) > 0
    assert torch.allclose(split_grads, full_grads, atol=1e-6, rtol=1e-4)
    assert split_metrics.keys() == full_metrics.keys()
    for key, value in full_metrics.items():
        assert split_metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
