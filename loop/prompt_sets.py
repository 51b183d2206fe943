"""Prompt sets for "Sample into a study": an uploaded file, a study's prompts, or a run's prompts.

A prompt is a string or a list of chat messages ({role, content}); it stays a list until the sampler renders
it with each model's own chat template. Rubric prompts carry their rubric (a list of strings) along.
Every source is checked here and refused with a message naming the field (and line) at fault.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
from django.core.exceptions import ValidationError

from evaluation.models import Item, Study, StudyKind
from training.engine.data import DatasetError, Example, load_dataset, split_held_out
from training.engine.demo_tasks import addition_prompts, builtin_prompts, sorting_preferences, sorting_supervised
from training.engine.preflight import DATASET_KINDS
from training.models import Run

MAX_PROMPTS = 2000
MAX_PROMPT_CHARS = 50_000
MAX_FILE_BYTES = 10 * 2**20
_ROLES = {"system", "user", "assistant", "tool"}

PromptRow = dict[str, Any]  # {"prompt": str | list[message], "rubric"?: list[str]}


def _prompt_value(value: Any, where: str, field: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise ValidationError({field: f"{where}: field 'prompt' is empty"})
        if len(value) > MAX_PROMPT_CHARS:
            raise ValidationError({field: f"{where}: field 'prompt' is longer than {MAX_PROMPT_CHARS} characters"})
        return value
    if isinstance(value, list) and value:
        messages = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
                raise ValidationError(
                    {field: f"{where}: field 'prompt'[{i}] must be {{role, content}} with role one of {sorted(_ROLES)}"}
                )
            messages.append({"role": str(m["role"]), "content": str(m["content"])})
        if sum(len(m["content"]) for m in messages) > MAX_PROMPT_CHARS:
            raise ValidationError({field: f"{where}: the prompt is longer than {MAX_PROMPT_CHARS} characters"})
        return messages
    raise ValidationError({field: f"{where}: field 'prompt' must be a string or a non-empty list of messages"})


def _row(raw: Any, where: str, field: str) -> PromptRow:
    if not isinstance(raw, dict):
        raise ValidationError({field: f"{where}: each row must be a JSON object with a 'prompt'"})
    if "prompt" not in raw:
        raise ValidationError({field: f"{where}: missing field 'prompt'"})
    row: PromptRow = {"prompt": _prompt_value(raw["prompt"], where, field)}
    rubric = raw.get("rubric")
    if rubric is not None:
        if not isinstance(rubric, list) or not rubric or not all(isinstance(r, str) and r.strip() for r in rubric):
            raise ValidationError({field: f"{where}: field 'rubric' must be a non-empty list of non-empty strings"})
        row["rubric"] = [str(r) for r in rubric]
    if b"\\u0000" in orjson.dumps(row):  # PostgreSQL's jsonb and text columns cannot hold U+0000
        raise ValidationError({field: f"{where}: contains a NUL character (U+0000), which cannot be stored"})
    return row


def prompts_from_file(data: bytes, *, field: str = "prompts_file") -> list[PromptRow]:
    """Rows of an uploaded JSONL file (or a JSON array) of ``{"prompt": ..., "rubric"?: [...]}``."""
    if len(data) > MAX_FILE_BYTES:
        raise ValidationError({field: f"the file is larger than {MAX_FILE_BYTES // 2**20} MB"})
    text = data.lstrip()
    rows: list[PromptRow] = []
    if text.startswith(b"["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValidationError({field: f"this is not a valid JSON array ({exc})"}) from None
        rows = [_row(r, f"row {i}", field) for i, r in enumerate(parsed, start=1)]
    else:
        for number, line in enumerate(data.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValidationError({field: f"line {number}: not valid JSON ({exc})"}) from None
            rows.append(_row(raw, f"line {number}", field))
            if len(rows) > MAX_PROMPTS:
                break
    if not rows:
        raise ValidationError({field: "the file has no prompts"})
    if len(rows) > MAX_PROMPTS:
        raise ValidationError({field: f"more than {MAX_PROMPTS} prompts; split the file"})
    return rows


def prompts_from_study(study: Study) -> list[PromptRow]:
    """The distinct prompts of a study's items, in item order (a rubric study's goals keep their rubric)."""
    rows: list[PromptRow] = []
    seen: set[bytes] = set()
    for payload in Item.objects.filter(study=study).order_by("position", "id").values_list("payload", flat=True):
        if study.kind == StudyKind.RUBRIC:
            row: PromptRow = {"prompt": payload.get("goal", ""), "rubric": list(payload.get("rubric", []))}
        elif study.kind == StudyKind.VIOLATION:
            row = {"prompt": payload.get("intent", "")}
        else:
            row = {"prompt": payload.get("prompt", "")}
        if not row["prompt"]:
            continue
        key = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if not rows:
        raise ValidationError({"prompt_study": f"study '{study.name}' has no prompts yet"})
    return rows


# The data kind each recipe reads (what its held-out split is drawn from): the launch check's table, plus the demo.
RECIPE_KIND: dict[str, str] = {**DATASET_KINDS, "demo": "supervised"}


def run_prompt_source(run: Run) -> tuple[str, str]:
    """(what the run's prompts are, the dataset path or "" for built-in data): its held-out split first."""
    config = run.config if isinstance(run.config, dict) else {}
    held_file, data = config.get("eval_dataset_path"), config.get("dataset_path")
    if isinstance(held_file, str) and held_file:
        return "held-out split", held_file
    fraction = config.get("eval_fraction")
    path = data if isinstance(data, str) else ""
    if isinstance(fraction, int | float) and fraction > 0:
        return f"held-out split ({fraction:g} of its data)", path
    return ("training data", path) if path else ("built-in demo prompts", "")


def prompts_from_run(run: Run) -> list[PromptRow]:
    """The prompts of a run's held-out split (its eval file, or the same seeded share of its data the engine
    holds out: training.engine.data.split_held_out), else of its training data, else its built-in task."""
    label, path = run_prompt_source(run)
    config = run.config if isinstance(run.config, dict) else {}
    if label.startswith("held-out split (") and isinstance(config.get("eval_fraction"), int | float):
        return _held_out_prompts(run, path=path, fraction=float(config["eval_fraction"]))
    if not path:
        return [{"prompt": p} for p in builtin_prompts(run.recipe)]
    return _dataset_prompts(Path(path), field="prompt_run")


def _held_out_prompts(run: Run, *, path: str, fraction: float) -> list[PromptRow]:
    kind = RECIPE_KIND.get(run.recipe, "prompt")
    seed = int(run.config.get("seed", 0) or 0)  # the spec's seed (training.services.supervisor.write_spec)
    raw: list[Any] | None = None
    examples: list[Example]
    if path:
        try:
            examples = load_dataset(path, kind=kind)  # type: ignore[arg-type]
        except DatasetError as exc:
            raise ValidationError({"prompt_run": f"the run's dataset cannot be read here: {exc}"}) from None
        raw = _raw_prompts(Path(path))
    elif kind == "supervised":
        examples = list(sorting_supervised(n=2000, seed=1234))
    elif kind == "preference":
        examples = list(sorting_preferences(n=2000, seed=99))
    else:
        examples = list(addition_prompts())
    _, held = split_held_out(examples, fraction=fraction, seed=seed)
    wanted, rows, seen = set(held), [], set()
    cap = int(run.config.get("eval_max_examples", MAX_PROMPTS) or MAX_PROMPTS)
    # The raw prompt (chat messages stay messages) where the file's rows line up with the parsed examples.
    originals = raw if raw is not None and len(raw) == len(examples) else [getattr(e, "prompt", "") for e in examples]
    for example, original in zip(examples, originals, strict=True):
        if example in wanted and example not in seen and original:
            seen.add(example)
            rows.append({"prompt": original})
    if not rows:
        raise ValidationError({"prompt_run": "the run's held-out split has no prompts"})
    return rows[:cap]


def _raw_prompts(path: Path) -> list[Any]:
    """Each row's prompt as written in the file (None where a row has none), in the order load_dataset reads."""
    out: list[Any] = []
    for raw in _read_rows(path):
        value = raw.get("prompt") if isinstance(raw, dict) else None
        if (
            value is None
            and isinstance(raw, dict)
            and isinstance(raw.get("messages"), list)
            and len(raw["messages"]) > 1
        ):
            value = raw["messages"][:-1]
        out.append(value)
    return out


def _read_rows(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # only Parquet users pay for pyarrow

        rows: list[Any] = pq.read_table(path).to_pylist()
        return rows
    out: list[Any] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append(None)  # the run's own checks refuse bad rows; here they only give no prompt
    return out


def _dataset_prompts(path: Path, *, field: str) -> list[PromptRow]:
    """The prompt of each row of a TRL-format dataset (prompt column, or the turns before the last in messages)."""
    if not path.is_file():
        raise ValidationError({field: f"the run's dataset {path} is not readable here"})
    raw_rows = _read_rows(path)
    rows: list[PromptRow] = []
    seen: set[bytes] = set()
    for raw in raw_rows:
        if not isinstance(raw, dict):
            continue
        value = raw.get("prompt")
        if value is None and isinstance(raw.get("messages"), list) and len(raw["messages"]) > 1:
            value = raw["messages"][:-1]
        if value is None:
            continue
        try:
            row = _row({"prompt": value, "rubric": raw.get("rubric")}, "row", field)
        except ValidationError:
            continue
        key = orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if not rows:
        raise ValidationError({field: f"the run's dataset {path.name} has no prompts"})
    return rows


def choose(rows: list[PromptRow], *, limit: int, seed: int) -> list[PromptRow]:
    """At most ``limit`` prompts: all of them, or a seeded random subset kept in the set's order."""
    if len(rows) <= limit:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), limit))  # noqa: S311 - a seeded sample, not security
    return [rows[i] for i in picked]
