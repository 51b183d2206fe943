"""Checks of a run's data before it is queued, and token lengths to size truncation limits from the data.

The launch form, the runs API and "Train on this" call these in the web process, so a missing file, a file
in the wrong columns or data that truncation would leave without signal is a field error at launch, not a
traceback seconds into the run. They use the engine's own reader, tokenizer and truncation (``load_dataset``,
``load_tokenizer``, ``truncation.cut``), so what launch accepts is what the run accepts.

Token counts need the model's tokenizer: the built-in 'tiny' one (trained on the data, as the run does) or a
local model folder. A hub id is not fetched from the web process: those rows are checked for shape only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from training.engine.config import BaseRecipeConfig, SequenceDataConfig
from training.engine.data import (
    DatasetError,
    DatasetKind,
    Example,
    PreferenceExample,
    ScoredExample,
    SupervisedExample,
    load_dataset,
)
from training.engine.truncation import Truncation, TruncationReport, UnusableDataError, check_usable, cut

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# What each recipe reads from ``dataset_path`` (recipes missing here read no dataset: the demos).
DATASET_KINDS: dict[str, DatasetKind] = {
    "sft": "supervised",
    "reward_model": "preference",
    "dpo": "preference",
    "grpo": "prompt",
    "reward_regression": "scored",
    "process_reward_model": "steps",
    "rubric_judge": "rubric_items",
}
COLUMNS: dict[DatasetKind, str] = {
    "supervised": "prompt + completion, text, or messages",
    "preference": "prompt, chosen, rejected",
    "prompt": "prompt (and optionally answer / solution / ground_truth, rubric)",
    "scored": "prompt, response (or completion), score",
    "steps": "prompt, trajectory, step_labels (a violation study's reward export)",
    "rubric_items": "prompt, response, rubric, satisfied (a rubric study's reward export)",
}
PATH_FIELDS = ("dataset_path", "eval_dataset_path")
CHECK_ROWS = 20_000  # rows read at launch: enough to judge a file, bounded for a web request


@dataclass(frozen=True)
class Problem:
    """What is wrong with one config field, in words for the form."""

    field: str
    message: str


def is_local_path(value: str) -> bool:
    """A plain filesystem path (an artifact URI such as s3://… is resolved on the worker, not here)."""
    return "://" not in value


def dataset_problems(recipe: str, config: BaseRecipeConfig, *, limit: int = CHECK_ROWS) -> list[Problem]:
    """Every path field of ``config`` that the run could not train on, with why; empty when all is well."""
    kind = DATASET_KINDS.get(recipe)
    if kind is None:
        return []
    problems: list[Problem] = []
    loaded: dict[str, list[Example]] = {}
    for name in PATH_FIELDS:
        value = str(getattr(config, name, "") or "")
        if not value or not is_local_path(value):
            continue
        try:
            loaded[name] = read_examples(value, kind=kind, limit=limit)
        except DatasetError as error:
            problems.append(Problem(name, str(error)))
    if problems or "dataset_path" not in loaded or not isinstance(config, SequenceDataConfig):
        return problems
    tokenizer = tokenizer_for_counting(config.model_name_or_path, [e for rows in loaded.values() for e in rows])
    if tokenizer is None:
        return problems
    limits = Truncation(*config.truncation_limits())
    for name, examples in loaded.items():
        path = str(getattr(config, name))
        examples = rendered_examples(tokenizer, path, examples, kind=kind, limit=limit)
        report = truncation_report(tokenizer, examples, limits)
        try:
            check_usable(report, limits)
        except UnusableDataError as error:
            shown = f" (of the first {limit:,} rows)" if len(examples) >= limit else ""
            problems.append(Problem(name, f"{error}{shown}"))
    return problems


def read_examples(path: str, *, kind: DatasetKind, limit: int | None = CHECK_ROWS) -> list[Example]:
    """The file's first rows as examples; a DatasetError names the line and field, and for a missing column
    which columns the recipe reads and which the file has."""
    try:
        return load_dataset(path, kind=kind, limit=limit)
    except DatasetError as error:
        if "missing field" in str(error):
            found = _first_row_columns(Path(path))
            has = f"; the file's first row has {', '.join(found)}" if found else ""
            raise DatasetError(f"{error}. This recipe reads {COLUMNS[kind]}{has}.") from None
        raise
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DatasetError(f"{path}: cannot be read ({error.strerror})") from None


def _first_row_columns(path: Path) -> list[str]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        import json

        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    return sorted(row) if isinstance(row, dict) else []
    except Exception:  # a hint only: the main error is already known
        return []
    return []


def tokenizer_for_counting(model: str, examples: Sequence[Example]) -> PreTrainedTokenizerBase | None:
    """The tokenizer the run will use, when it can be had without a download (the 'tiny' one trained on these
    examples, a model folder, a hub id already in the local cache); else None."""
    from training.engine.demo_tasks import task_texts
    from training.engine.tokens import CountingTokenizer, char_tokenizer_core

    if model == "tiny":  # the run trains this tokenizer on the data; built without torch, ids identical
        return cast("PreTrainedTokenizerBase", CountingTokenizer(char_tokenizer_core(task_texts(list(examples)))))
    from training.engine.modeling import load_tokenizer

    try:
        if Path(model).is_absolute():
            return load_tokenizer(model) if Path(model).is_dir() else None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model, local_files_only=True)  # never a download from here
    except Exception:  # no tokenizer there, or not cached: the run itself will load (or fetch) it
        return None


def rendered_examples(
    tokenizer: PreTrainedTokenizerBase, path: str, examples: list[Example], *, kind: DatasetKind, limit: int | None
) -> list[Example]:
    """The examples as the run renders them: with the tokenizer's chat template when it has one (the recipes
    re-read conversational data with it once the tokenizer is known)."""
    if not getattr(tokenizer, "chat_template", None):
        return examples
    from training.engine.recipes.base import chat_renderer

    return load_dataset(path, kind=kind, render=chat_renderer(tokenizer), limit=limit)


def truncation_report(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], limits: Truncation
) -> TruncationReport:
    """What the engine's truncation does to these examples (as the recipes count it)."""
    from training.engine.tokens import encode_completions, encode_prompts

    report = TruncationReport()
    prompts = encode_prompts(tokenizer, [e.prompt for e in examples])
    bos = tokenizer.bos_token_id
    if examples and isinstance(examples[0], PreferenceExample):
        pairs = cast(Sequence[PreferenceExample], examples)
        chosen = encode_completions(tokenizer, [e.chosen for e in pairs])
        rejected = encode_completions(tokenizer, [e.rejected for e in pairs])
        for i, p in enumerate(prompts):
            report.add(i, [cut(p, chosen[i], limits, bos=bos), cut(p, rejected[i], limits, bos=bos)], pair=True)
    elif examples and isinstance(examples[0], SupervisedExample | ScoredExample):
        completions = encode_completions(tokenizer, [_answer(e) for e in examples])
        for i, p in enumerate(prompts):
            report.add(i, [cut(p, completions[i], limits, bos=bos)])
    return report


def _answer(example: Example) -> str:
    """What follows the prompt in a sequence the recipe trains on."""
    if isinstance(example, ScoredExample):
        return example.response
    return cast(SupervisedExample, example).completion


# --- sizing limits from the data ("Train on this") ------------------------------------------------------


@dataclass(frozen=True)
class LengthProfile:
    """Token lengths of a dataset's prompts and completions (both sides of a pair), and limits that fit them."""

    rows: int
    prompt: tuple[int, int, int]  # median, 95th percentile, max
    completion: tuple[int, int, int]
    max_length: int
    max_prompt_length: int
    max_completion_length: int
    prompts_cut: int  # rows whose prompt the suggested limits cut (from the left)
    completions_cut: int  # rows with a completion the suggested limits cut
    unusable: int  # rows left without signal (should be 0)

    def limits(self) -> dict[str, int]:
        return {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "max_completion_length": self.max_completion_length,
        }


def percentile(values: Sequence[int], q: float) -> int:
    """The nearest-rank percentile (a length that q% of the rows fit in)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _round_up(n: int, to: int = 8) -> int:
    return max(to, -(-n // to) * to)


def size_limits(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    prompt_percentile: float = 95.0,
    cap: int = 131_072,
) -> LengthProfile:
    """Limits from the data: completions kept whole (the longest, so no answer loses its end), prompts to their
    ``prompt_percentile`` (a longer prompt loses its beginning, from the left, as TRL cuts it), max_length
    their sum; each rounded up to a multiple of 8 and capped at ``cap`` (the model's context)."""
    from training.engine.tokens import encode_completions, encode_prompts

    prompt_lens = [len(p) for p in encode_prompts(tokenizer, [e.prompt for e in examples])]
    completion_texts: list[list[str]] = []
    for e in examples:
        if isinstance(e, PreferenceExample):
            completion_texts.append([e.chosen, e.rejected])
        elif isinstance(e, SupervisedExample | ScoredExample):
            completion_texts.append([_answer(e)])
        else:
            completion_texts.append([e.answer or ""])
    flat = encode_completions(tokenizer, [t for texts in completion_texts for t in texts])
    completion_lens: list[int] = []
    row_longest: list[int] = []
    at = 0
    for texts in completion_texts:
        lens = [len(ids) for ids in flat[at : at + len(texts)]]
        at += len(texts)
        completion_lens += lens
        row_longest.append(max(lens))
    completion = min(_round_up(max(completion_lens)), cap // 2)
    prompt = min(_round_up(percentile(prompt_lens, prompt_percentile)), cap - completion)
    total = min(_round_up(prompt + completion), cap)
    prompt = min(prompt, total - 1)  # the config requires max_prompt_length < max_length
    limits = Truncation(total, prompt, completion)
    report = truncation_report(tokenizer, examples, limits)
    return LengthProfile(
        rows=len(examples),
        prompt=(percentile(prompt_lens, 50), percentile(prompt_lens, 95), max(prompt_lens)),
        completion=(percentile(completion_lens, 50), percentile(completion_lens, 95), max(completion_lens)),
        max_length=total,
        max_prompt_length=prompt,
        max_completion_length=completion,
        prompts_cut=sum(n > prompt for n in prompt_lens),
        completions_cut=sum(n > completion for n in row_longest),
        unusable=report.examples - report.usable,
    )


def model_context(tokenizer: PreTrainedTokenizerBase, default: int = 131_072) -> int:
    """The longest sequence the tokenizer's model takes, when it says so sensibly (transformers uses a huge
    sentinel for 'unknown')."""
    value: Any = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int) and 8 <= value <= default else default
