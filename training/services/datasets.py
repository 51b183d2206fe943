"""Launch-time checks of a run's dataset files, and limits sized from the data for "Train on this".

Thin Django wrappers over ``training.engine.preflight`` (which reads and tokenises as the run will): a problem
becomes a ``ValidationError`` keyed by the config field, which the launch form puts next to that field and
the runs API returns as a 422 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from training.engine.config import RECIPES, BaseRecipeConfig
from training.engine.data import DatasetError


def check_run_datasets(*, recipe: str, config: BaseRecipeConfig | dict[str, Any]) -> None:
    """Refuse a launch whose data the run could not train on: a missing or unreadable file, wrong columns,
    a bad row (named by line), or rows that truncation would leave (mostly) without signal.

    Whether the user may read the path at all is checked before this (access, not content).
    """
    from training.engine import preflight  # tokenizers and torch load only when a dataset is checked

    info = RECIPES.get(recipe)
    if info is None or recipe not in preflight.DATASET_KINDS:
        return
    parsed = config if isinstance(config, BaseRecipeConfig) else info.config_cls.model_validate(config)
    if not any(getattr(parsed, name, "") for name in preflight.PATH_FIELDS):
        return
    problems = preflight.dataset_problems(recipe, parsed)
    if problems:
        errors: dict[str, list[str]] = {}
        for problem in problems:
            errors.setdefault(problem.field, []).append(problem.message)
        raise ValidationError(errors)


@dataclass(frozen=True)
class DataSizing:
    """What "Train on this" tells the researcher: which model's tokenizer sized the limits, and the lengths."""

    model: str
    dataset: str
    profile: Any  # preflight.LengthProfile (typed loosely: the engine module is imported lazily)
    note: str = ""


def size_from_data(*, recipe: str, dataset: str, model: str) -> DataSizing | None:
    """Truncation limits that fit ``dataset`` for ``model``'s tokenizer; without a profile (and a note saying why)
    when they cannot be had here (a recipe without such limits, a file the launch check would refuse, a hub model
    not on this host); None for a recipe that reads no dataset."""
    from training.engine import preflight
    from training.engine.config import SequenceDataConfig

    info = RECIPES.get(recipe)
    kind = preflight.DATASET_KINDS.get(recipe)
    if info is None or kind is None:
        return None
    if not issubclass(info.config_cls, SequenceDataConfig):
        return DataSizing(model, dataset, None, "this recipe has no prompt/completion limits to size")
    if not preflight.is_local_path(dataset):
        return DataSizing(model, dataset, None, "the file is read on the worker: limits not sized here")
    try:
        examples = preflight.read_examples(dataset, kind=kind)
    except DatasetError as error:
        return DataSizing(model, dataset, None, f"limits not sized: {error}")
    tokenizer = preflight.tokenizer_for_counting(model, examples)
    if tokenizer is None:
        return DataSizing(model, dataset, None, "this model's tokenizer is not on this host: limits not sized")
    examples = preflight.rendered_examples(tokenizer, dataset, examples, kind=kind, limit=preflight.CHECK_ROWS)
    profile = preflight.size_limits(tokenizer, examples, cap=preflight.model_context(tokenizer))
    return DataSizing(model, dataset, profile)
