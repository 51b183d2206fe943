"""Samples while training: every N steps a recipe logs a small table of prompts, completions and rewards."""

from __future__ import annotations

from typing import Any

from training.engine.recipes import build_recipe
from training.engine.recipes.base import run_training


def _run(context_factory: Any, recipe: str, **config: Any) -> Any:
    ctx, reporter = context_factory(recipe, {"max_steps": 4, "save_steps": 100, "batch_size": 4, **config})
    run_training(build_recipe(ctx))
    return reporter


def test_sft_logs_the_same_prompts_each_time_with_the_reference_beside(context_factory: Any) -> None:
    reporter = _run(context_factory, "sft", sample_table_steps=2, sample_table_rows=3, sample_table_max_new_tokens=5)
    assert [(name, step) for name, step, _, _ in reporter.tables] == [("samples", 2), ("samples", 4)]
    (_, _, columns, rows2), (_, _, _, rows4) = reporter.tables
    assert columns == ["prompt", "completion", "reference"]
    assert len(rows2) == 3 and [r[0] for r in rows2] == [r[0] for r in rows4]
    assert all(isinstance(r[1], str) and len(r[1]) <= 5 for r in rows2)  # a character tokenizer: <= 5 tokens
    assert all(r[2] == "".join(sorted(r[0][:-1])) for r in rows2)  # the sorting task's reference answer


def test_a_table_does_not_change_the_training(context_factory: Any) -> None:
    with_tables = _run(context_factory, "sft", sample_table_steps=1)
    without = _run(context_factory, "sft", sample_table_steps=0)
    assert without.tables == [] and len(with_tables.tables) == 4
    assert with_tables.series("loss") == without.series("loss")


def test_dpo_table_has_the_implicit_reward_and_reward_models_score_both_sides(context_factory: Any) -> None:
    reporter = _run(context_factory, "dpo", sample_table_steps=4, sample_table_rows=2)
    ((_, step, columns, rows),) = reporter.tables
    assert step == 4 and columns == ["prompt", "completion", "reward", "chosen", "rejected"]
    assert all(isinstance(r[2], float) for r in rows)
    reporter = _run(context_factory, "reward_model", sample_table_steps=4, sample_table_rows=2)
    ((_, _, columns, rows),) = reporter.tables
    assert columns == ["prompt", "chosen", "rejected", "reward/chosen", "reward/rejected"]
    assert all(isinstance(r[3], float) and isinstance(r[4], float) for r in rows)


def test_grpo_logs_its_generation_batch_and_samples_during_the_warm_start(context_factory: Any) -> None:
    reporter = _run(
        context_factory,
        "demo_grpo",
        max_steps=4,
        sft_warmup_steps=2,
        num_generations=2,
        sample_table_steps=2,
        sample_table_rows=4,
    )
    (_, _, warm_columns, warm_rows), (_, _, columns, rows) = reporter.tables
    assert warm_columns == ["prompt", "completion", "reward", "rewards/numeric_answer", "answer"]
    assert columns == ["prompt", "completion", "reward", "rewards/numeric_answer", "advantage", "answer"]
    assert len(rows) == 4 and rows[0][0] == rows[1][0]  # a group: G completions of one prompt
    assert all(r[2] in (0.0, 1.0) for r in rows)  # the numeric verifier
    group = [r[4] for r in rows[:2]]
    assert abs(sum(group)) < 1e-3  # group-relative advantages
    assert len(warm_rows) == 4
