"""What a parsed upload row becomes: an item, an attachment to a waiting item, or an error naming line and field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_ROW_BYTES = 2_000_000
MAX_ERRORS = 50  # past this a report is noise; the first ones name the problem


class RowInvalid(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class RowError:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"field '{self.field}': {self.message}" if self.field else self.message
        where = f"line {self.line}"
        return f"{where}, field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class ParsedItem:
    line: int
    payload: dict[str, Any]
    is_gold: bool = False
    expected: Any = None
    external_id: str = ""
    # A violation task from ST-WebAgentBench's task file has no trajectory yet: it waits, unserved.
    waiting: bool = False


@dataclass(frozen=True)
class ParsedAttachment:
    """Something that belongs to an item keyed by (task_id, agent): its trajectory, an automatic verdict, or both.

    `judge` names the automatic judge (e.g. "ST-WebAgentBench evaluator"); `verdict` is a violation
    judgment payload in the shape evaluation.judgments stores people's (steps may be None).
    """

    line: int
    task_id: str
    agent: str
    trajectory: list[dict[str, Any]] | None = None
    verdict: dict[str, Any] | None = None
    judge: str = ""
    categories: list[str] | None = None  # per policy, to check the verdict matches the task's policies


Parsed = ParsedItem | ParsedAttachment


@dataclass
class ParseResult:
    items: list[ParsedItem] = field(default_factory=list)
    attachments: list[ParsedAttachment] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0  # may exceed len(errors), which is capped at MAX_ERRORS
    container: str = ""

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add_error(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)


# --------------------------------------------------------------------------- field helpers


def check_no_nul(value: Any, name: str) -> None:
    """PostgreSQL's jsonb cannot hold U+0000: refuse it by name instead of failing at insert."""
    # One C-speed scan of the serialised row; only a row that has one is walked to name the field.
    try:
        clean = b"\\u0000" not in orjson.dumps(value)
    except TypeError:  # a value orjson cannot write (a Parquet decimal): walk it
        clean = False
    if not clean:
        _find_nul(value, name)


def _find_nul(value: Any, name: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise RowInvalid(name, "contains a NUL character (U+0000), which cannot be stored")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _find_nul(key, name)
            _find_nul(inner, f"{name}.{key}" if name else str(key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _find_nul(inner, f"{name}[{i}]")


def text(row: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise RowInvalid(name, "missing")
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowInvalid(name, "must be a string")
    if required and not value.strip():
        raise RowInvalid(name, "must not be empty")
    return value


def messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowInvalid(name, "must be a non-empty string or list of messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowInvalid(f"{name}[{i}]", "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role.strip():
            raise RowInvalid(f"{name}[{i}].role", "missing")
        if not isinstance(content, str):
            raise RowInvalid(f"{name}[{i}].content", "must be a string")
        out.append({"role": role, "content": content})
    return out


def text_or_messages(row: dict[str, Any], name: str, *, allow_empty: bool = False) -> str | list[dict[str, str]]:
    value = row.get(name)
    if value is None:
        raise RowInvalid(name, "missing")
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise RowInvalid(name, "must not be empty")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return messages(value, name)
