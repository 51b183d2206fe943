"""Programmatic verifiers, registered by name: exact match, numeric answer, regex, format."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from training.engine.data import PromptExample
from training.engine.rewards import RewardFunc

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# DeepSeek-R1's output format: reasoning in <think>, the result in <answer>.
R1_FORMAT = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"


def extract_answer(completion: str) -> str:
    """The text inside the last <answer>...</answer> if there is one, else the whole completion."""
    tags = _ANSWER_TAG.findall(completion)
    return str(tags[-1]).strip() if tags else completion.strip()


def exact_match(completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
    """1.0 when the (extracted) answer equals the reference answer after stripping whitespace."""
    return [
        float(e.answer is not None and extract_answer(c) == e.answer.strip())
        for c, e in zip(completions, examples, strict=True)
    ]


def numeric_answer(completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
    """1.0 when the last number in the (extracted) answer equals the reference number (relative tol. 1e-6)."""
    scores: list[float] = []
    for completion, example in zip(completions, examples, strict=True):
        got, want = _last_number(extract_answer(completion)), _last_number(example.answer or "")
        scores.append(float(got is not None and want is not None and math.isclose(got, want, rel_tol=1e-6)))
    return scores


def make_regex(pattern: str) -> RewardFunc:
    """1.0 when the whole completion matches ``pattern`` (re.fullmatch, DOTALL)."""
    compiled = re.compile(pattern, re.DOTALL)

    def regex(completions: Sequence[str], examples: Sequence[PromptExample]) -> list[float]:
        return [float(compiled.fullmatch(c) is not None) for c in completions]

    return regex


def make_format(pattern: str = R1_FORMAT) -> RewardFunc:
    """1.0 when the completion follows the expected output format (default: R1's <think>/<answer> tags)."""
    return make_regex(pattern)


def _last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    try:
        return float(found[-1]) if found else None
    except ValueError:
        return None


VERIFIERS: dict[str, Callable[[str], RewardFunc]] = {
    "exact_match": lambda _: exact_match,
    "numeric_answer": lambda _: numeric_answer,
    "regex": make_regex,
    "format": lambda pattern: make_format(pattern or R1_FORMAT),
}
