"""Built-in toy tasks for the demo recipes and tests: small enough for a ~1M-parameter model on a CPU."""

from __future__ import annotations

import random
from collections.abc import Sequence

from training.engine.data import Example, PreferenceExample, PromptExample, ScoredExample, SupervisedExample


def addition_supervised(
    *, n: int, seed: int, max_operand: int = 9, label_noise: float = 0.0
) -> list[SupervisedExample]:
    """``a+b=`` -> ``a+b``; with ``label_noise`` that fraction of answers is replaced by a wrong one.

    Noisy labels give a warm-started model a known ceiling that RL with an exact verifier can break through.
    """
    rng = random.Random(seed)  # noqa: S311 - seeded toy data
    examples: list[SupervisedExample] = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        answer = a + b
        if rng.random() < label_noise:
            answer = rng.choice([x for x in range(2 * max_operand + 1) if x != a + b])
        examples.append(SupervisedExample(prompt=f"{a}+{b}=", completion=str(answer)))
    return examples


def addition_prompts(*, max_operand: int = 9) -> list[PromptExample]:
    """Every ``a+b=`` prompt with its answer, for GRPO with a numeric verifier."""
    return [
        PromptExample(prompt=f"{a}+{b}=", answer=str(a + b))
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
    ]


def sorting_supervised(*, n: int, seed: int, length: int = 5) -> list[SupervisedExample]:
    """``dbca>`` -> ``abcd``: a task a tiny model learns in a few hundred steps; the loss falls quickly."""
    rng = random.Random(seed)  # noqa: S311 - seeded toy data
    letters = "abcdefghij"
    examples: list[SupervisedExample] = []
    for _ in range(n):
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, length)))
        examples.append(SupervisedExample(prompt=f"{word}>", completion="".join(sorted(word))))
    return examples


def sorting_preferences(*, n: int, seed: int, length: int = 5) -> list[PreferenceExample]:
    """Sorted (chosen) against the unsorted input (rejected): preference data for reward models and DPO."""
    return [
        PreferenceExample(prompt=e.prompt, chosen=e.completion, rejected=e.prompt[:-1][::-1] + "x")
        for e in sorting_supervised(n=n, seed=seed, length=length)
    ]


def task_texts(examples: Sequence[Example]) -> list[str]:
    """Every string in the examples: what a tiny tokenizer is trained on."""
    texts: list[str] = []
    for e in examples:
        if isinstance(e, SupervisedExample):
            texts += [e.prompt, e.completion]
        elif isinstance(e, PreferenceExample):
            texts += [e.prompt, e.chosen, e.rejected]
        elif isinstance(e, ScoredExample):
            texts += [e.prompt, e.response]
        else:
            texts += [e.prompt, e.answer or "", *e.rubric]
    return texts


def builtin_prompts(recipe: str) -> list[str]:
    """The prompts a recipe trains on when its config names no dataset (what "Sample into a study" offers)."""
    if recipe in {"grpo", "demo_grpo"}:
        return [p.prompt for p in addition_prompts()]
    # demo, sft, dpo and reward_model fall back on the sorting task; its distinct prompts, in first-seen order
    return list(dict.fromkeys(e.prompt for e in sorting_supervised(n=2000, seed=1234)))
