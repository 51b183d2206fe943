"""Evaluation during training: held-out prompts or pairs every eval_steps, the same reward functions, eval/* keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from training.engine.config import GRPOConfig, SFTConfig
from training.engine.data import SupervisedExample, split_held_out
from training.engine.demo_tasks import sorting_preferences
from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training


def eval_rows(reporter: Any) -> dict[int, dict[str, float]]:
    """step -> the eval/* metrics reported at that step."""
    out: dict[int, dict[str, float]] = {}
    for step, metrics in reporter.metrics:
        if any(k.startswith("eval/") for k in metrics):
            assert all(k.startswith("eval/") for k in metrics), "eval metrics travel in their own report"
            out[step] = metrics
    return out


def test_held_out_split_is_seeded_disjoint_and_sized() -> None:
    examples = [SupervisedExample(f"p{i}", f"c{i}") for i in range(200)] + [SupervisedExample("p7", "c7")] * 3
    train, held = split_held_out(examples, fraction=0.1, seed=3)
    assert len(held) == 20 and len(train) + len(held) + 3 * (examples[-1] in held) == len(examples)
    assert not set(train) & set(held)  # a repeated row lies wholly on one side
    assert len(set(held)) == len(held)
    assert split_held_out(examples, fraction=0.1, seed=3) == (train, held)  # a resumed run holds out the same
    assert split_held_out(examples, fraction=0.1, seed=4)[1] != held
    assert split_held_out(examples, fraction=0.0, seed=3) == (examples, [])
    assert len(split_held_out(examples[:2], fraction=0.5, seed=0)[0]) == 1  # never the whole training set


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"eval_steps": 5}, "eval_steps"),
        ({"eval_fraction": 0.1}, "eval_fraction"),
        ({"eval_dataset_path": "/x.jsonl"}, "eval_dataset_path"),
        ({"eval_steps": 5, "eval_fraction": 0.1, "eval_dataset_path": "/x.jsonl"}, "eval_fraction"),
    ],
)
def test_half_configured_evaluation_is_refused_on_its_field(config: dict[str, Any], field: str) -> None:
    for cls in (SFTConfig, GRPOConfig):
        with pytest.raises(ValidationError) as caught:
            cls.model_validate(config)
        assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_sft_evaluates_held_out_examples_it_never_trains_on(context_factory: Any) -> None:
    ctx, reporter = context_factory(
        "sft",
        {"max_steps": 25, "learning_rate": 3e-3, "save_steps": 100, "eval_steps": 10, "eval_fraction": 0.05},
    )
    recipe = build_recipe(ctx)
    held = {(e.prompt, e.completion) for e in recipe.eval_examples}
    assert 20 < len(recipe.eval_examples) < 256  # 5% of the distinct words, capped at eval_max_examples
    assert not held & {(e.prompt, e.completion) for e in recipe.examples}  # type: ignore[attr-defined]
    run_training(recipe)
    rows = eval_rows(reporter)
    assert sorted(rows) == [10, 20, 25]  # every eval_steps, and the last step
    assert {"eval/loss", "eval/mean_token_accuracy", "eval/num_tokens", "eval/runtime"} <= rows[10].keys()
    assert rows[25]["eval/loss"] < rows[10]["eval/loss"]  # the model generalises to held-out words
    assert rows[10]["eval/num_tokens"] == rows[25]["eval/num_tokens"]  # the same held-out set every time


@pytest.mark.parametrize(
    ("recipe", "keys"),
    [
        (
            "dpo",
            ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen"),
        ),
        ("reward_model", ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")),
    ],
)
def test_pair_recipes_evaluate_an_eval_file(
    context_factory: Any, tmp_path: Path, recipe: str, keys: tuple[str, ...]
) -> None:
    path = tmp_path / "eval.jsonl"
    rows = [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in sorting_preferences(n=40, seed=7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ctx, reporter = context_factory(
        recipe,
        {"max_steps": 12, "learning_rate": 1e-3, "save_steps": 100, "eval_steps": 6, "eval_dataset_path": str(path)},
    )
    built = build_recipe(ctx)
    assert len(built.eval_examples) == 40
    run_training(built)
    found = eval_rows(reporter)
    assert sorted(found) == [6, 12]
    for key in keys:
        assert f"eval/{key}" in found[12], key
    assert found[12]["eval/loss"] < found[6]["eval/loss"]
    accuracy = "eval/rewards/accuracies" if recipe == "dpo" else "eval/accuracy"
    assert found[12][accuracy] > 0.5


GRPO_EVAL = {
    "batch_size": 4,
    "num_generations": 4,
    "max_new_tokens": 3,
    "learning_rate": 1e-2,
    "save_steps": 3,
    "max_steps": 6,
    "reward_funcs": ["regex"],
    "reward_regex": "[0-4].*",
}


def test_grpo_evaluates_held_out_prompts_with_the_training_rewards(context_factory: Any, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(6)))
    config = {**GRPO_EVAL, "eval_steps": 2, "eval_dataset_path": str(path)}
    ctx, reporter = context_factory("grpo", config, out="with-eval")
    run_training(build_recipe(ctx))
    found = eval_rows(reporter)
    assert sorted(found) == [2, 4, 6]
    row = found[6]
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "rewards/regex/mean"):
        assert f"eval/{key}" in row, key
    assert row["eval/reward"] == pytest.approx(row["eval/rewards/regex/mean"])  # one function, weight 1
    assert 0.0 <= row["eval/reward"] <= 1.0
    assert 1.0 <= row["eval/completions/mean_length"] <= 3.0

    # Evaluation draws from its own random stream and takes no gradient: training is what it is without it.
    ctx_plain, plain = context_factory("grpo", GRPO_EVAL, out="without-eval")
    run_training(build_recipe(ctx_plain))
    for key in ("loss", "reward", "grad_norm"):
        assert reporter.series(key) == plain.series(key), key

    # A run resumed from checkpoint-3 evaluates (and trains) exactly as the uninterrupted one.
    ctx_b, resumed = context_factory("grpo", config, out="resumed", resume_from=str(ctx.output_dir / "checkpoint-3"))
    run_training(build_recipe(ctx_b))
    again = eval_rows(resumed)
    assert sorted(again) == [4, 6]
    for step in (4, 6):
        assert {k: v for k, v in again[step].items() if k != "eval/runtime"} == {
            k: v for k, v in found[step].items() if k != "eval/runtime"
        }
