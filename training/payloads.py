"""Parsing and validation of the ingest API's JSON bodies (pure: no database, no Django).

Every function either returns fully validated columns or raises PayloadError naming the first
bad field (`points[17].value`), so a bad batch is refused whole and nothing of it is written.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

MAX_POINTS = 50_000
MAX_LINES = 10_000
MAX_STEP = 2**62  # steps and seqs: bigint columns, with room for chunk arithmetic (step // CHUNK_STEPS)
MAX_TIME = 1e11  # unix seconds (year 5138): a bound that refuses milliseconds sent as seconds
INT32 = (-(2**31), 2**31 - 1)  # IntegerField (exit_code)
MAX_NAME = 200
MAX_TAG = 50
MAX_RECIPE = 64  # Run.recipe's column
MAX_NAME_QUERY = 200  # GET /api/runs/?q=, a part of a run's name
MAX_TAGS = 100
MAX_PATH = 1000
MAX_CONFIG_DEPTH = 32
# A samples table: small by design (a handful of prompts every N steps), bounded per request and per run.
MAX_TABLE_ROWS = 256
MAX_TABLE_COLUMNS = 32
MAX_CELL_CHARS = 10_000
MAX_TABLE_CHARS = 2_000_000
TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_.:/@%+\- ]{1,64}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_.:/@%+\- ]{1,200}$")
STREAMS = frozenset({"stdout", "stderr", "client"})
CLIENT_STATUSES = frozenset({"running", "succeeded", "failed", "cancelled"})
SYSTEM_FIELDS = ("cpu_percent", "memory_percent", "process_rss_mb", "gpu_percent", "gpu_memory_percent")


class PayloadError(ValueError):
    """A request body the API refuses; `field` is the JSON path of the first bad value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class MetricBatch:
    """Column-oriented points, one entry per point in each list.

    `runs`, when known (the columnar `series` body), says the keys come as consecutive runs of
    (key, count): the writer then maps names to ids per run instead of per point.
    """

    keys: list[str]
    steps: list[int]
    values: list[float]
    times: list[float]
    runs: tuple[tuple[str, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.steps)

    def columns(self) -> ColumnBatch:
        """The same points as numpy columns (what the writer works on)."""
        if self.runs is not None:  # the columnar body: one lookup per series, not per point
            names = list(dict.fromkeys(k for k, _ in self.runs))
            index = {name: i for i, name in enumerate(names)}
            keys = np.repeat(np.array([index[k] for k, _ in self.runs], dtype=np.int64), [c for _, c in self.runs])
        else:
            names = list(dict.fromkeys(self.keys))
            index = {name: i for i, name in enumerate(names)}
            keys = np.fromiter(map(index.__getitem__, self.keys), dtype=np.int64, count=len(self.keys))
        return ColumnBatch(
            names,
            keys,
            np.array(self.steps, dtype=np.int64),
            np.array(self.values, dtype=np.float64),
            np.array(self.times, dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class ColumnBatch:
    """Points as numpy columns: point i is (names[keys[i]], steps[i], values[i], times[i])."""

    names: list[str]
    keys: np.ndarray  # int64 index into names
    steps: np.ndarray  # int64
    values: np.ndarray  # float64, finite
    times: np.ndarray  # float64, unix seconds

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True, slots=True)
class LogBatch:
    seqs: list[int]
    streams: list[str]
    texts: list[str]
    times: list[float]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _list_field(body: Any, name: str, limit: int) -> list[Any]:
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    items = body.get(name)
    if not isinstance(items, list):
        raise PayloadError(name, "must be a list")
    if len(items) > limit:
        raise PayloadError(name, f"at most {limit} items per batch, got {len(items)}")
    return items


def parse_metrics(body: Any, *, now: float) -> MetricBatch | ColumnBatch:
    """Any of three body shapes (exactly one of `blocks`, `series`, `points`):

    - binary blocks (what arbiter_client sends; no number is formatted or parsed as text):
      `{"blocks": [{"keys": [str], "steps": base64 int64 LE, "values": base64 float64 LE (row-major,
      len(steps) × len(keys)), "times": base64 float64 LE (one per step)?}]}`;
    - columnar JSON: `{"series": [{"key": str, "steps": [int ≥ 0], "values": [finite number],
      "times": [unix seconds]?}]}` (the lists of one series are equally long);
    - one object per point: `{"points": [{"key": str, "step": int ≥ 0, "value": finite number,
      "time": unix seconds?}]}`.
    """
    shapes = [name for name in ("blocks", "series", "points") if isinstance(body, dict) and name in body]
    if len(shapes) > 1:
        raise PayloadError("body", f"send one of blocks, series or points, not {' and '.join(shapes)}")
    if shapes == ["blocks"]:
        return _parse_blocks(_list_field(body, "blocks", MAX_POINTS), now=now)
    if shapes == ["series"]:
        return _parse_series(_list_field(body, "series", MAX_POINTS), now=now)
    items = _list_field(body, "points", MAX_POINTS)
    fast = _parse_metrics_fast(items, now=now)
    return fast if fast is not None else _parse_metrics_exact(items, now=now)


def _parse_series(items: list[Any], *, now: float) -> MetricBatch:
    keys: list[str] = []
    steps: list[int] = []
    values: list[float] = []
    times: list[float] = []
    runs: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        where = f"series[{i}]"
        if not isinstance(item, dict):
            raise PayloadError(where, "must be an object")
        key = item.get("key")
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise PayloadError(f"{where}.key", "must be 1-200 letters, digits, spaces or _.:/@%+-")
        s, v, t = item.get("steps"), item.get("values"), item.get("times")
        if not isinstance(s, list):
            raise PayloadError(f"{where}.steps", "must be a list")
        if not isinstance(v, list) or len(v) != len(s):
            raise PayloadError(f"{where}.values", f"must be a list as long as steps ({len(s)})")
        if t is not None and (not isinstance(t, list) or len(t) != len(s)):
            raise PayloadError(f"{where}.times", f"must be a list as long as steps ({len(s)}), or left out")
        if len(steps) + len(s) > MAX_POINTS:
            raise PayloadError("series", f"at most {MAX_POINTS} points per batch")
        if not s:
            continue
        if not _valid_steps(s):
            raise PayloadError(f"{where}.steps[{_first_bad(s, _valid_step)}]", "must be an integer ≥ 0")
        if not _valid_values(v):
            raise PayloadError(f"{where}.values[{_first_bad(v, _valid_value)}]", "must be a finite number")
        if t is None:
            t = [now] * len(s)
        elif not _valid_times(t):
            raise PayloadError(f"{where}.times[{_first_bad(t, _valid_time)}]", "must be unix seconds")
        keys += [key] * len(s)
        steps += s
        values += v if set(map(type, v)) == {float} else map(float, v)
        times += t if set(map(type, t)) == {float} else map(float, t)
        runs.append((key, len(s)))
    return MetricBatch(keys, steps, values, times, tuple(runs))


MAX_BLOCK_KEYS = 1000


def _parse_blocks(items: list[Any], *, now: float) -> ColumnBatch:
    names: dict[str, int] = {}
    keys: list[np.ndarray] = []
    steps: list[np.ndarray] = []
    values: list[np.ndarray] = []
    times: list[np.ndarray] = []
    total = 0
    for i, item in enumerate(items):
        where = f"blocks[{i}]"
        if not isinstance(item, dict):
            raise PayloadError(where, "must be an object")
        block_keys = item.get("keys")
        if not isinstance(block_keys, list) or not 0 < len(block_keys) <= MAX_BLOCK_KEYS:
            raise PayloadError(f"{where}.keys", f"must be a list of 1-{MAX_BLOCK_KEYS} metric names")
        for j, key in enumerate(block_keys):
            if not isinstance(key, str) or not KEY_RE.fullmatch(key):
                raise PayloadError(f"{where}.keys[{j}]", "must be 1-200 letters, digits, spaces or _.:/@%+-")
        if len(set(block_keys)) != len(block_keys):
            raise PayloadError(f"{where}.keys", "must not repeat a name")
        s = _packed(item.get("steps"), "<i8", f"{where}.steps")
        v = _packed(item.get("values"), "<f8", f"{where}.values")
        width = len(block_keys)
        if len(v) != len(s) * width:
            raise PayloadError(f"{where}.values", f"must hold len(steps) × len(keys) = {len(s) * width} numbers")
        total += len(v)
        if total > MAX_POINTS:
            raise PayloadError("blocks", f"at most {MAX_POINTS} points per batch")
        if "times" in item:
            t = _packed(item["times"], "<f8", f"{where}.times")
            if len(t) != len(s):
                raise PayloadError(f"{where}.times", f"must hold one time per step ({len(s)})")
        else:
            t = np.full(len(s), now, dtype=np.float64)
        if len(s) and (bad := np.flatnonzero((s < 0) | (s >= MAX_STEP))).size:
            raise PayloadError(f"{where}.steps[{bad[0]}]", f"must be an integer in [0, {MAX_STEP})")
        if len(v) and not np.isfinite(v).all():
            raise PayloadError(f"{where}.values[{np.flatnonzero(~np.isfinite(v))[0]}]", "must be a finite number")
        if len(t) and (bad := np.flatnonzero(~((t >= 0) & (t < MAX_TIME)))).size:
            raise PayloadError(f"{where}.times[{bad[0]}]", "must be unix seconds")
        index = np.array([names.setdefault(k, len(names)) for k in block_keys], dtype=np.int64)
        keys.append(np.tile(index, len(s)))
        steps.append(np.repeat(s, width))
        times.append(np.repeat(t, width))
        values.append(v)
    if not keys:
        return ColumnBatch([], *(np.empty(0, dtype=d) for d in (np.int64, np.int64, np.float64, np.float64)))
    return ColumnBatch(list(names), *(np.concatenate(c) for c in (keys, steps, values, times)))


def _packed(raw: Any, dtype: str, field: str) -> np.ndarray:
    """A base64 string of packed little-endian numbers, as a numpy array (a copy: it is written to)."""
    if not isinstance(raw, str):
        raise PayloadError(field, "must be a base64 string of packed little-endian numbers")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(field, "is not valid base64") from None
    if len(data) % 8:
        raise PayloadError(field, "must hold a whole number of 8-byte numbers")
    return np.frombuffer(data, dtype=dtype).astype(dtype[1:], copy=True)


# Whole-column checks with C-level builtins (~10x faster than a per-item loop); on failure the
# per-item predicate finds the index to name.
def _valid_steps(col: list[Any]) -> bool:
    return set(map(type, col)) == {int} and min(col) >= 0 and max(col) < MAX_STEP


def _valid_values(col: list[Any]) -> bool:
    types = set(map(type, col))
    if types == {float}:
        # A sum of finite floats is finite unless it overflows, so check item by item only then.
        return math.isfinite(sum(col)) or all(map(math.isfinite, col))
    return types <= {int, float} and all(map(_valid_value, col))


def _valid_times(col: list[Any]) -> bool:
    return set(map(type, col)) <= {int, float} and min(col) >= 0 and max(col) < MAX_TIME


def _valid_step(v: Any) -> TypeGuard[int]:
    return type(v) is int and 0 <= v < MAX_STEP


def _valid_value(v: Any) -> TypeGuard[int | float]:
    try:
        return _is_number(v) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        return False


def _valid_time(v: Any) -> bool:
    return _is_number(v) and 0 <= v < MAX_TIME


def _first_bad(col: list[Any], ok: Any) -> int:
    """Index of the first item `ok` refuses (called only once the column check has failed)."""
    return next((j for j, item in enumerate(col) if not ok(item)), -1)


def _parse_metrics_fast(items: list[Any], *, now: float) -> MetricBatch | None:
    """Whole-column checks with C-level builtins (~10x faster than a per-point loop).

    Returns None at the first doubt; the exact loop then finds and names the bad field.
    """
    try:
        keys = [p["key"] for p in items]
        steps = [p["step"] for p in items]
        values = [p["value"] for p in items]
        times = [p.get("time", now) for p in items]
    except (KeyError, TypeError, AttributeError):
        return None
    if not items:
        return MetricBatch([], [], [], [])
    if set(map(type, steps)) != {int} or min(steps) < 0 or max(steps) >= MAX_STEP:
        return None
    value_types = set(map(type, values))
    if not _valid_values(values):
        return None
    time_types = set(map(type, times))
    if not time_types <= {int, float} or min(times) < 0 or max(times) >= MAX_TIME:
        return None
    if set(map(type, keys)) != {str} or not all(map(KEY_RE.fullmatch, set(keys))):
        return None
    if int in value_types:
        values = [float(v) for v in values]
    if int in time_types:
        times = [float(t) for t in times]
    return MetricBatch(keys, steps, values, times)


def _parse_metrics_exact(items: list[Any], *, now: float) -> MetricBatch:
    keys: list[str] = []
    steps: list[int] = []
    values: list[float] = []
    times: list[float] = []
    seen_keys: set[str] = set()
    for i, p in enumerate(items):
        if not isinstance(p, dict):
            raise PayloadError(f"points[{i}]", "must be an object")
        key, step, value, t = p.get("key"), p.get("step"), p.get("value"), p.get("time", now)
        if not isinstance(key, str):  # (checked before the set lookup: a list is not hashable)
            raise PayloadError(f"points[{i}].key", "must be 1-200 letters, digits, spaces or _.:/@%+-")
        if key not in seen_keys:  # a batch repeats a handful of keys: check each once
            if not KEY_RE.fullmatch(key):
                raise PayloadError(f"points[{i}].key", "must be 1-200 letters, digits, spaces or _.:/@%+-")
            seen_keys.add(key)
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < MAX_STEP:
            raise PayloadError(f"points[{i}].step", "must be an integer ≥ 0")
        if not _valid_value(value):
            raise PayloadError(f"points[{i}].value", "must be a finite number")
        if not _valid_time(t):
            raise PayloadError(f"points[{i}].time", "must be unix seconds")
        keys.append(key)
        steps.append(step)
        values.append(float(value))
        times.append(float(t))
    return MetricBatch(keys, steps, values, times)


def parse_logs(body: Any, *, now: float) -> LogBatch:
    """`{"lines": [{"seq": int ≥ 0, "stream": "stdout"|"stderr"|"client", "text": str, "time": number?}]}`."""
    items = _list_field(body, "lines", MAX_LINES)
    out = LogBatch([], [], [], [])
    for i, line in enumerate(items):
        if not isinstance(line, dict):
            raise PayloadError(f"lines[{i}]", "must be an object")
        seq, stream, text, t = line.get("seq"), line.get("stream", "client"), line.get("text"), line.get("time", now)
        if not _valid_step(seq):
            raise PayloadError(f"lines[{i}].seq", f"must be an integer in [0, {MAX_STEP})")
        if not isinstance(stream, str) or stream not in STREAMS:
            raise PayloadError(f"lines[{i}].stream", f"must be one of {sorted(STREAMS)}")
        if not isinstance(text, str):
            raise PayloadError(f"lines[{i}].text", "must be a string")
        if not _valid_time(t):
            raise PayloadError(f"lines[{i}].time", "must be unix seconds")
        out.seqs.append(seq)
        out.streams.append(stream)
        out.texts.append(text[:10_000].replace("\x00", ""))  # PostgreSQL text cannot hold NUL
        out.times.append(float(t))
    return out


def parse_system(body: Any, *, now: float) -> MetricBatch:
    """`{"samples": [{"seq": int, "time": number, "cpu_percent": number, ...}]}` → points under `system/`.

    The sample's seq is its step, so system series are idempotent like any other metric.
    """
    items = _list_field(body, "samples", MAX_LINES)
    batch = MetricBatch([], [], [], [])
    for i, s in enumerate(items):
        if not isinstance(s, dict):
            raise PayloadError(f"samples[{i}]", "must be an object")
        seq, t = s.get("seq"), s.get("time", now)
        if not _valid_step(seq):
            raise PayloadError(f"samples[{i}].seq", f"must be an integer in [0, {MAX_STEP})")
        if not _valid_time(t):
            raise PayloadError(f"samples[{i}].time", "must be unix seconds")
        for name in SYSTEM_FIELDS:
            if name not in s:
                continue
            if not _valid_value(s[name]):
                raise PayloadError(f"samples[{i}].{name}", "must be a finite number")
            batch.keys.append(f"system/{name}")
            batch.steps.append(seq)
            batch.values.append(float(s[name]))
            batch.times.append(float(t))
    return batch


@dataclass(frozen=True, slots=True)
class TableBatch:
    name: str
    step: int
    columns: list[str]
    rows: list[list[str | float | int | bool | None]]


def parse_table(body: Any) -> TableBatch:
    """`{"name": str, "step": int ≥ 0, "columns": [str], "rows": [[cell, ...]]}`; a cell is a string, a finite
    number, a boolean or null, and every row has one cell per column."""
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    name, step, columns = body.get("name", "samples"), body.get("step"), body.get("columns")
    if not isinstance(name, str) or not TABLE_NAME_RE.fullmatch(name):
        raise PayloadError("name", "must be 1-64 letters, digits, spaces or _.:/@%+-")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < MAX_STEP:
        raise PayloadError("step", "must be an integer ≥ 0")
    if not isinstance(columns, list) or not 1 <= len(columns) <= MAX_TABLE_COLUMNS:
        raise PayloadError("columns", f"must be a list of 1-{MAX_TABLE_COLUMNS} names")
    for i, c in enumerate(columns):
        if not isinstance(c, str) or not 0 < len(c) <= 100 or "\x00" in c:
            raise PayloadError(f"columns[{i}]", "must be a name of 1-100 characters (no NUL)")
    if len(set(columns)) != len(columns):
        raise PayloadError("columns", "names must be distinct")
    rows = _list_field(body, "rows", MAX_TABLE_ROWS)
    out: list[list[str | float | int | bool | None]] = []
    size = 0
    for r, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise PayloadError(f"rows[{r}]", f"must be a list of {len(columns)} cells (one per column)")
        cells: list[str | float | int | bool | None] = []
        for c, cell in enumerate(row):
            if isinstance(cell, str):
                if len(cell) > MAX_CELL_CHARS:
                    raise PayloadError(f"rows[{r}][{c}]", f"at most {MAX_CELL_CHARS} characters")
                size += len(cell)
                cells.append(cell.replace("\x00", ""))  # PostgreSQL text cannot hold NUL
            elif cell is None or isinstance(cell, bool) or (_is_number(cell) and math.isfinite(cell)):
                cells.append(cell)
            else:
                raise PayloadError(f"rows[{r}][{c}]", "must be a string, a finite number, a boolean or null")
        out.append(cells)
    if size > MAX_TABLE_CHARS:
        raise PayloadError("rows", f"at most {MAX_TABLE_CHARS} characters of text per table")
    return TableBatch(name, step, [str(c) for c in columns], out)


def parse_status(body: Any) -> tuple[str, int | None]:
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    status, exit_code = body.get("status"), body.get("exit_code")
    if not isinstance(status, str) or status not in CLIENT_STATUSES:
        raise PayloadError("status", f"must be one of {sorted(CLIENT_STATUSES)}")
    if exit_code is not None and not _int_in(exit_code, *INT32):
        raise PayloadError("exit_code", f"must be an integer in [{INT32[0]}, {INT32[1]}] or null")
    return status, exit_code


def parse_checkpoint(body: Any) -> tuple[int, str]:
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    step, path = body.get("step"), body.get("path")
    if not _valid_step(step):
        raise PayloadError("step", f"must be an integer in [0, {MAX_STEP})")
    if not isinstance(path, str) or not path.startswith(("/", "file:///", "s3://")) or len(path) > MAX_PATH:
        raise PayloadError("path", f"must be an absolute path or a file:// or s3:// URI of at most {MAX_PATH} chars")
    if "\x00" in path:
        raise PayloadError("path", "must not contain NUL characters")
    return step, path


def parse_new_run(body: Any) -> tuple[str, dict[str, Any], list[str]]:
    """`{"name": str, "config": object, "tags": [str]}` for a run created from an external script."""
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    name, config, tags = body.get("name", ""), body.get("config", {}), body.get("tags", [])
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise PayloadError("name", f"must be a string of at most {MAX_NAME} characters")
    if "\x00" in name:
        raise PayloadError("name", "must not contain NUL characters")
    if not isinstance(config, dict):
        raise PayloadError("config", "must be an object")
    check_json_text(config, "config")
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise PayloadError("tags", f"must be a list of at most {MAX_TAGS} strings")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not 0 < len(tag.strip()) <= MAX_TAG or "\x00" in tag:
            raise PayloadError(f"tags[{i}]", f"must be a string of 1-{MAX_TAG} characters, without NUL")
    return name, config, tags


def parse_launch(body: Any) -> tuple[str, dict[str, Any], str, str, list[str], bool, int]:
    """`{"recipe": str, "config": object, "name"?, "queue"?, "tags"?, "shared"?, "gpus"?}`: a platform run to launch.

    `gpus` must be an integer here (a 400 naming it); its range and whether a worker has that many slots are
    the service's rules (a 422 naming it), the same ones the launch form shows.
    """
    if not isinstance(body, dict):
        raise PayloadError("body", "must be a JSON object")
    recipe = body.get("recipe")
    if not isinstance(recipe, str) or not recipe:
        raise PayloadError("recipe", "must be a recipe name")
    name, config, tags = parse_new_run({k: body[k] for k in ("name", "config", "tags") if k in body})
    queue, shared = body.get("queue", "gpu"), body.get("shared", False)
    if not isinstance(queue, str) or len(queue) > MAX_NAME:
        raise PayloadError("queue", "must be a queue name")
    if not isinstance(shared, bool):
        raise PayloadError("shared", "must be true or false")
    gpus = body.get("gpus", 1)
    if type(gpus) is not int:
        raise PayloadError("gpus", "must be an integer (the number of GPUs the run uses)")
    return recipe, config, name, queue, tags, shared, gpus


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def check_json_text(value: Any, path: str, depth: int = 0) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (NUL in a string or a key) and absurd nesting, naming where."""
    if depth > MAX_CONFIG_DEPTH:
        raise PayloadError(path, f"is nested deeper than {MAX_CONFIG_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise PayloadError(path, "must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                raise PayloadError(f"{path}.{key.replace(chr(0), '?')}", "key must not contain NUL characters")
            check_json_text(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_json_text(item, f"{path}[{i}]", depth + 1)
