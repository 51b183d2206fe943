"""Checkpoints are Hugging Face folders, and resuming from one equals never having stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.engine.checkpoints import latest_checkpoint
from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        ("sft", {"lr_scheduler": "cosine", "warmup_steps": 2}),
        (
            "grpo",
            {
                "batch_size": 2,
                "num_generations": 2,
                "max_new_tokens": 3,
                "learning_rate": 1e-2,
                "reward_funcs": ["regex"],
                "reward_regex": "[0-9].*",
            },
        ),
        (
            # two passes per generation batch: checkpoint-3 falls between the passes over batch 2 (steps 3-4),
            # so the resumed run must finish that batch with its stored π_old, not sample a new one with the
            # step-3 weights. "[0-4].*" splits every group of this tiny model's samples (checked below), so
            # every step has a learning signal and step 4's ratio to π_old is far from 1.
            "grpo",
            {
                "batch_size": 4,
                "num_generations": 4,
                "max_new_tokens": 3,
                "learning_rate": 3e-2,
                "num_iterations": 2,
                "beta": 0.05,
                "reward_funcs": ["regex"],
                "reward_regex": "[0-4].*",
            },
        ),
    ],
    ids=["sft", "grpo", "grpo-mid-batch"],
)
def test_resume_equals_uninterrupted_run(context_factory: Any, recipe: str, extra: dict[str, Any]) -> None:
    config = {"max_steps": 6, "save_steps": 3, "learning_rate": 3e-3, **extra}
    ctx, straight = context_factory(recipe, config, out="straight")
    final_straight = run_training(build_recipe(ctx))
    # An interrupted run would have written exactly the straight run's checkpoint-3: resume from it.
    checkpoint = ctx.output_dir / "checkpoint-3"
    assert latest_checkpoint(ctx.output_dir) == ctx.output_dir / "checkpoint-6"
    ctx_b, resumed = context_factory(recipe, config, out="resumed", resume_from=str(checkpoint))
    final_resumed = run_training(build_recipe(ctx_b))
    assert final_straight is not None
    assert final_resumed is not None
    a, b = weights(final_straight), weights(final_resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [s for s, _ in resumed.metrics] == [4, 5, 6]
    for key in ("loss", "num_tokens", "reward", "kl", "clip_ratio/region_mean"):
        assert straight.series(key)[3:] == resumed.series(key), key
    if extra.get("num_iterations", 1) > 1:
        # The case is only a test if the weights move: every step's groups disagree, and at step 4 (the pass
        # that reads the stored π_old) the policy has moved enough for the clip to bind.
        assert max(straight.series("frac_reward_zero_std")) < 1.0
        assert straight.series("clip_ratio/region_mean")[3] > 0.1
        assert any(not torch.equal(weights(checkpoint)[n], a[n]) for n in a)


def test_checkpoint_folder_loads_with_transformers_and_as_next_model(context_factory: Any) -> None:
    ctx, reporter = context_factory("sft", {"max_steps": 4, "save_steps": 2})
    final = run_training(build_recipe(ctx))
    assert [step for step, _ in reporter.checkpoints] == [2, 4]
    for step, path in reporter.checkpoints:
        folder = Path(path)
        assert folder.name == f"checkpoint-{step}"
        assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"} <= {
            p.name for p in folder.iterdir()
        }
    assert final is not None
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("ab>", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape[-1] == len(tokenizer)
    # the next run starts from it
    ctx2, reporter2 = context_factory("sft", {"max_steps": 1, "model_name_or_path": str(final)}, out="next")
    run_training(build_recipe(ctx2))
    assert reporter2.series("loss")[0] < reporter.series("loss")[0]
