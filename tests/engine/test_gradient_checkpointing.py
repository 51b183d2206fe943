"""Gradient checkpointing recomputes activations in backward and changes nothing else: the same loss and gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.engine.recipes import build_recipe
from training.engine.recipes.base import Recipe, seed_step

LORA = {"finetuning": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1}
GRPO = {
    "batch_size": 4,
    "num_generations": 4,
    "max_new_tokens": 3,
    "max_length": 16,
    "reward_funcs": ["regex"],
    "reward_regex": "[0-9].*",
}


def first_layer_mlp(recipe: Recipe) -> torch.nn.Module:
    """A module inside the first decoder layer: backward's recompute calls its ``forward`` again (module hooks do
    not show it: transformers checkpoints the layer's ``forward``, and the recompute runs without them)."""
    layer = next(m for m in recipe.model.modules() if type(m).__name__ == "LlamaDecoderLayer")
    mlp: torch.nn.Module = layer.mlp
    return mlp


def step_with_layer_calls(recipe: Recipe) -> tuple[dict[str, float], dict[str, torch.Tensor], int]:
    """One training step: its metrics, its gradients, and how often the first decoder layer's MLP ran forward."""
    calls = 0
    mlp = first_layer_mlp(recipe)
    forward = mlp.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    mlp.forward = counted  # type: ignore[method-assign]
    seed_step(0, 1)
    metrics = recipe.train_step(1)
    del mlp.forward
    grads = {n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.grad is not None}
    return metrics, grads, calls


@pytest.mark.parametrize(
    ("recipe", "options"),
    [
        ("sft", {}),
        ("sft", {**LORA, "gradient_accumulation_steps": 2}),  # lora dropout: the recompute replays its RNG
        ("reward_model", LORA),
        ("dpo", {"gradient_accumulation_steps": 2}),
        ("grpo", {**GRPO, "beta": 0.05}),
    ],
    ids=["sft", "sft-lora-accumulated", "reward_model-lora", "dpo-accumulated", "grpo-kl"],
)
def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients(
    context_factory: Any, recipe: str, options: dict[str, Any]
) -> None:
    plain = build_recipe(context_factory(recipe, {**options, "max_steps": 1}, out="plain")[0])
    expected_metrics, expected_grads, plain_calls = step_with_layer_calls(plain)
    config = {**options, "max_steps": 1, "gradient_checkpointing": True}
    checkpointed = build_recipe(context_factory(recipe, config, out="checkpointed")[0])
    metrics, grads, calls = step_with_layer_calls(checkpointed)
    assert calls > plain_calls  # the layer ran again in backward: activations were recomputed, not kept
    assert metrics["loss"] == pytest.approx(expected_metrics["loss"], rel=1e-6, abs=1e-7)
    assert grads.keys() == expected_grads.keys() and grads
    assert any(float(g.abs().sum()) > 0 for g in grads.values())
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
