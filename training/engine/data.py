"""Datasets in TRL's column conventions, from JSONL or Parquet; a bad file is refused naming the line and field.

Accepted rows (TRL's "standard" and "conversational" formats):
- supervised: ``{"prompt", "completion"}``, ``{"text"}`` or ``{"messages": [{"role", "content"}, ...]}``
  (the last assistant message is the completion);
- preference: ``{"prompt", "chosen", "rejected"}``, where each may be a string or a list of messages;
- prompt-only (GRPO): ``{"prompt"}`` plus optional ``answer`` / ``solution`` / ``ground_truth`` (what the
  verifiers compare with) and ``rubric`` (a list of item strings for the rubric judge).

Rows of a human study's reward export, each read as what one recipe trains on:
- scored: ``{"prompt", "response" (or "completion"), "score"}`` with a score in [0, 1] (rating and rubric
  exports): a reward model's regression target. Rows whose score is null (every verdict "unclear") are left out.
- steps: a violation export's ``{"prompt", "trajectory": [step, ...], "step_labels": [0..1 per step]}``, one
  scored example per step: the task and the steps before it as the prompt, the step as the response, and the
  share of annotators who marked it as violating a policy (a process reward model's label).
- rubric_items: a rubric export's ``{"prompt", "response", "rubric": [item, ...], "satisfied": [0..1|null]}``,
  one supervised example per judged item: ``JUDGE_TEMPLATE`` as the prompt, " yes" or " no" (the people's
  majority) as the completion, what the rubric judge reward asks a model (rewards/models.py).
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Message = dict[str, str]
Renderer = Callable[[list[Message], bool], str]
DatasetKind = Literal["supervised", "preference", "prompt", "scored", "steps", "rubric_items"]
JUDGE_TEMPLATE = "Task: {prompt}\nResponse: {response}\nDoes the response satisfy: {item}? Answer yes or no.\nAnswer:"
_ROLES = {"system", "user", "assistant", "tool"}
_ANSWER_FIELDS = ("answer", "solution", "ground_truth")


class DatasetError(ValueError):
    """A dataset row that cannot be used; the message names the file, line (or row) and field."""


@dataclass(frozen=True)
class SupervisedExample:
    """A prompt and the completion to learn (the loss falls on the completion)."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class PreferenceExample:
    """A prompt with a preferred and a dispreferred completion."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PromptExample:
    """A prompt to sample from, with what the rewards need to score a completion."""

    prompt: str
    answer: str | None = None
    rubric: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ScoredExample:
    """A prompt and a response with a score in [0, 1] (a rating, a rubric pass rate, a step's violation label)."""

    prompt: str
    response: str
    score: float


Example = SupervisedExample | PreferenceExample | PromptExample | ScoredExample


def render_step(step: Any) -> str:
    """One agent step as one line (a completion's steps are its lines, see rewards/models.CompletionUnderPolicy):
    ``action -> observation`` for an object with those fields, else the value as JSON (or as written)."""
    if isinstance(step, dict) and "action" in step:
        text = str(step["action"])
        observation = step.get("observation")
        text = f"{text} -> {observation}" if observation not in (None, "") else text
    else:
        text = step if isinstance(step, str) else json.dumps(step, ensure_ascii=False, sort_keys=True)
    return " ".join(text.splitlines())


def render_step_prompt(task: str, earlier: Sequence[Any]) -> str:
    """The context a process reward model scores a step in: the task, then every earlier step."""
    lines = [f"Task: {task}"] + [f"Step {i + 1}: {render_step(s)}" for i, s in enumerate(earlier)]
    return "\n".join(lines) + f"\nStep {len(earlier) + 1}: "


def render_plain(messages: list[Message], add_generation_prompt: bool) -> str:
    """A chat rendering for tokenizers without a chat template: one ``role: content`` line per message."""
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + "assistant: " if add_generation_prompt else text


def load_dataset(
    path: str | Path, *, kind: DatasetKind, render: Renderer = render_plain, limit: int | None = None
) -> list[Example]:
    """Read a JSONL or Parquet file into examples of ``kind``; raise DatasetError on the first bad row.

    ``limit``: read only the first rows (the launch-time check of a large file)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a file")
    rows: Iterator[tuple[str, Any]]
    if path.suffix == ".parquet":
        rows = _parquet_rows(path)
    elif path.suffix in {".jsonl", ".json"}:
        rows = _jsonl_rows(path)
    else:
        raise DatasetError(f"{path}: expected a .jsonl or .parquet file")
    if limit is not None:
        rows = itertools.islice(rows, limit)
    examples = [e for where, row in rows for e in _parse_rows(row, where=where, kind=kind, render=render)]
    if not examples:
        raise DatasetError(f"{path}: the file has no rows")
    return examples


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq  # lazily: only Parquet users pay for pyarrow

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a corrupt file
        raise DatasetError(f"{path}: not a readable Parquet file ({error})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}:row {number}", row


def _parse_rows(row: Any, *, where: str, kind: DatasetKind, render: Renderer) -> list[Example]:
    """The examples one row holds: one, or none (a null score), or one per step / rubric item."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: each row must be a JSON object, got {type(row).__name__}")
    if kind == "scored":
        prompt = _prompt(row, where=where, render=render)
        name = "completion" if "completion" in row and "response" not in row else "response"
        score = _score(row.get("score"), where=where, name="score", optional=True)
        return [] if score is None else [ScoredExample(prompt, _completion(row, name, where=where), score)]
    if kind == "steps":
        return list(_steps(row, where=where))
    if kind == "rubric_items":
        return list(_rubric_items(row, where=where))
    return [_parse_row(row, where=where, kind=kind, render=render)]


def _score(value: Any, *, where: str, name: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise DatasetError(f"{where}: field {name!r} must be a number from 0 to 1, got {value!r}")
    return float(value)


def _steps(row: dict[str, Any], *, where: str) -> Iterator[ScoredExample]:
    for name in ("prompt", "trajectory", "step_labels"):
        if name not in row:
            raise DatasetError(f"{where}: missing field {name!r}")
    task, trajectory, labels = row["prompt"], row["trajectory"], row["step_labels"]
    if not isinstance(task, str):
        raise DatasetError(f"{where}: field 'prompt' must be a string")
    if not isinstance(trajectory, list) or not isinstance(labels, list) or len(labels) != len(trajectory):
        raise DatasetError(f"{where}: fields 'trajectory' and 'step_labels' must be lists of the same length")
    for k, step in enumerate(trajectory):
        label = _score(labels[k], where=where, name=f"step_labels[{k}]")
        assert label is not None
        yield ScoredExample(render_step_prompt(task, trajectory[:k]), render_step(step), label)


def _rubric_items(row: dict[str, Any], *, where: str) -> Iterator[SupervisedExample]:
    for name in ("prompt", "response", "rubric", "satisfied"):
        if name not in row:
            raise DatasetError(f"{where}: missing field {name!r}")
    items, satisfied = row["rubric"], row["satisfied"]
    if not isinstance(items, list) or not isinstance(satisfied, list) or len(items) != len(satisfied):
        raise DatasetError(f"{where}: fields 'rubric' and 'satisfied' must be lists of the same length")
    goal, response = _text(row, "prompt", where=where), _text(row, "response", where=where)
    for i, (item, share) in enumerate(zip(items, satisfied, strict=True)):
        value = _score(share, where=where, name=f"satisfied[{i}]", optional=True)
        if value is None or value == 0.5 or not isinstance(item, str):
            continue  # no verdict, or people split evenly: nothing to teach
        prompt = JUDGE_TEMPLATE.format(prompt=goal, response=response, item=item)
        yield SupervisedExample(prompt=prompt, completion=" yes" if value > 0.5 else " no")


def _parse_row(row: Any, *, where: str, kind: DatasetKind, render: Renderer) -> Example:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: each row must be a JSON object, got {type(row).__name__}")
    if kind == "supervised":
        return _supervised(row, where=where, render=render)
    if kind == "preference":
        return _preference(row, where=where, render=render)
    return _prompt_only(row, where=where, render=render)


def _supervised(row: dict[str, Any], *, where: str, render: Renderer) -> SupervisedExample:
    if "messages" in row:
        messages = _messages(row["messages"], where=where, name="messages")
        if messages[-1]["role"] != "assistant":
            raise DatasetError(f"{where}: field 'messages' must end with an assistant message")
        return SupervisedExample(prompt=render(messages[:-1], True), completion=messages[-1]["content"])
    if "text" in row and "prompt" not in row:
        return SupervisedExample(prompt="", completion=_text(row, "text", where=where))
    prompt = _prompt(row, where=where, render=render)
    return SupervisedExample(prompt=prompt, completion=_completion(row, "completion", where=where))


def _preference(row: dict[str, Any], *, where: str, render: Renderer) -> PreferenceExample:
    prompt = _prompt(row, where=where, render=render) if "prompt" in row else ""
    return PreferenceExample(
        prompt=prompt,
        chosen=_completion(row, "chosen", where=where),
        rejected=_completion(row, "rejected", where=where),
    )


def _prompt_only(row: dict[str, Any], *, where: str, render: Renderer) -> PromptExample:
    prompt = _prompt(row, where=where, render=render)
    answer: str | None = None
    for name in _ANSWER_FIELDS:
        if name in row and row[name] is not None:
            if not isinstance(row[name], str | int | float):
                raise DatasetError(f"{where}: field {name!r} must be a string or number")
            answer = str(row[name])
            break
    rubric: tuple[str, ...] = ()
    if "rubric" in row and row["rubric"] is not None:
        items = row["rubric"]
        if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
            raise DatasetError(f"{where}: field 'rubric' must be a list of non-empty strings")
        rubric = tuple(items)
    return PromptExample(prompt=prompt, answer=answer, rubric=rubric)


def _prompt(row: dict[str, Any], *, where: str, render: Renderer) -> str:
    if "prompt" not in row:
        raise DatasetError(f"{where}: missing field 'prompt'")
    value = row["prompt"]
    if isinstance(value, list):
        return render(_messages(value, where=where, name="prompt"), True)
    return _text(row, "prompt", where=where)


def _completion(row: dict[str, Any], name: str, *, where: str) -> str:
    if name not in row:
        raise DatasetError(f"{where}: missing field {name!r}")
    value = row[name]
    if isinstance(value, list):
        messages = _messages(value, where=where, name=name)
        return "".join(m["content"] for m in messages if m["role"] == "assistant")
    return _text(row, name, where=where)


def _text(row: dict[str, Any], name: str, *, where: str) -> str:
    value = row.get(name)
    if not isinstance(value, str):
        raise DatasetError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip() and name != "prompt":
        raise DatasetError(f"{where}: field {name!r} is empty")
    return value


def _messages(value: Any, *, where: str, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: field {name!r} must be a non-empty list of messages")
    messages: list[Message] = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise DatasetError(f"{where}: field {name!r}[{index}] must be an object with a string 'content'")
        role = message.get("role")
        if role not in _ROLES:
            raise DatasetError(f"{where}: field {name!r}[{index}].role must be one of {sorted(_ROLES)}, got {role!r}")
        messages.append({"role": str(role), "content": message["content"]})
    return messages


def step_indices(n: int, *, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Indices into a dataset of ``n`` rows for one optimiser step: a pure function of (seed, step), so a
    resumed run sees the same data. Epochs are seeded permutations; under torchrun each rank takes its own
    contiguous share."""
    global_size = batch_size * world_size
    start = (step - 1) * global_size + rank * batch_size
    indices: list[int] = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, n)
        indices.append(_permutation(n, seed, epoch)[offset])
    return indices


def step_batch(
    examples: Sequence[Example], *, batch_size: int, step: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[Example]:
    """The examples of one optimiser step (see ``step_indices``)."""
    chosen = step_indices(len(examples), batch_size=batch_size, step=step, seed=seed, rank=rank, world_size=world_size)
    return [examples[i] for i in chosen]


@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)  # noqa: S311 - seeded data order
    return tuple(order)


def split_held_out(examples: Sequence[Example], *, fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded share ``fraction`` of the distinct examples set aside, never trained on.

    The split is over distinct examples, so a row repeated in the data (short demo words, duplicated
    prompts) lies wholly on one side: no held-out example is also a training one. Held out: one copy each.
    A pure function of (examples, fraction, seed), so a resumed run holds out the same rows; the draw has its
    own random stream, independent of the data order of ``step_batch``.
    """
    distinct = list(dict.fromkeys(examples))
    if fraction <= 0 or len(distinct) < 2:
        return list(examples), []
    count = min(len(distinct) - 1, max(1, round(fraction * len(distinct))))
    order = list(range(len(distinct)))
    random.Random(f"arbiter-eval-split:{seed}").shuffle(order)  # noqa: S311 - seeded data split
    chosen = {distinct[i] for i in order[:count]}
    return [e for e in examples if e not in chosen], [e for e in distinct if e in chosen]
