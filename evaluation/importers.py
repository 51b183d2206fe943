"""Parse and validate study item uploads (JSONL), naming the line and field at fault.

No Django: a parser turns bytes into canonical item payloads or RowErrors, and the
import service decides what to store (all or nothing, unless the researcher asks
for the valid rows).

Canonical payloads per study kind:
  pairwise  {prompt, response_a, response_b, model_a, model_b}  (prompt: str or chat messages)
  rubric    {goal, plans: [{text, model}], rubric: [str]}
  violation {task_id, intent, policies: [{policy_category, policy_template_id, description, source}],
             trajectory: [{action, observation}], agent}
  rating    {prompt, response, model}
Any row may carry `gold: true` and `expected` (the gold answer) and an `id`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from evaluation.stats import POLICY_DIMENSIONS

MAX_LINE_BYTES = 2_000_000
MAX_ERRORS = 50  # past this a report is noise; the first ones name the problem
KINDS = ("pairwise", "rubric", "violation", "rating")


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
        where = f"line {self.line}"
        return f"{where}, field '{self.field}': {self.message}" if self.field else f"{where}: {self.message}"


@dataclass(frozen=True)
class ParsedItem:
    line: int
    payload: dict[str, Any]
    is_gold: bool = False
    expected: Any = None
    external_id: str = ""


@dataclass
class ParseResult:
    items: list[ParsedItem] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0  # may exceed len(errors), which is capped at MAX_ERRORS

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def parse_jsonl(data: bytes, *, kind: str) -> ParseResult:
    """Parse every line of a JSONL upload for a study of `kind`; blank lines are skipped."""
    if kind not in KINDS:
        raise ValueError(f"unknown study kind {kind!r}")
    normalise = NORMALISERS[kind]
    result = ParseResult()
    for line_no, raw in _lines(data):
        try:
            item = _parse_line(raw, normalise, line_no)
        except RowInvalid as exc:
            result.error_count += 1
            if len(result.errors) < MAX_ERRORS:
                result.errors.append(RowError(line_no, exc.field, exc.message))
            continue
        result.items.append(item)
    if not result.items and not result.error_count:
        result.error_count = 1
        result.errors.append(RowError(0, "", "the file has no items"))
    return result


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for line_no, raw in enumerate(data.splitlines(), start=1):
        stripped = raw.strip()
        if stripped:
            yield line_no, stripped


def _parse_line(raw: bytes, normalise: Callable[[dict[str, Any]], dict[str, Any]], line_no: int) -> ParsedItem:
    if len(raw) > MAX_LINE_BYTES:
        raise RowInvalid("", f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RowInvalid("", f"not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise RowInvalid("", "each line must be a JSON object")
    payload = normalise(row)
    is_gold = row.get("gold", row.get("is_gold", False))
    if not isinstance(is_gold, bool):
        raise RowInvalid("gold", "must be true or false")
    expected = row.get("expected")
    if is_gold and expected is None:
        expected = payload.pop("_default_expected", None)
        if expected is None:
            raise RowInvalid("expected", "a gold item needs an expected answer")
    payload.pop("_default_expected", None)
    external_id = row.get("id", row.get("task_id", ""))
    if not isinstance(external_id, str | int):
        raise RowInvalid("id", "must be a string or a number")
    if is_gold:
        validate_expected(kind_of(payload), expected, payload)
    return ParsedItem(line_no, payload, is_gold, expected, str(external_id))


# --------------------------------------------------------------------------- field helpers


def _text(row: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
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


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowInvalid(name, "must be a non-empty string or list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowInvalid(f"{name}[{i}]", "must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise RowInvalid(f"{name}[{i}].role", "missing")
        if not isinstance(content, str):
            raise RowInvalid(f"{name}[{i}].content", "must be a string")
        messages.append({"role": role, "content": content})
    return messages


def _text_or_messages(row: dict[str, Any], name: str) -> str | list[dict[str, str]]:
    value = row.get(name)
    if value is None:
        raise RowInvalid(name, "missing")
    if isinstance(value, str):
        if not value.strip():
            raise RowInvalid(name, "must not be empty")
        return value
    return _messages(value, name)


# --------------------------------------------------------------------------- per kind


def normalise_pairwise(row: dict[str, Any]) -> dict[str, Any]:
    """Accept {prompt, response_a, response_b, model_a, model_b}, {prompt, chosen, rejected}
    or whole transcripts {chosen, rejected} whose shared prefix is the prompt."""
    if "response_a" in row or "response_b" in row:
        payload = {
            "prompt": _text_or_messages(row, "prompt"),
            "response_a": _text(row, "response_a"),
            "response_b": _text(row, "response_b"),
            "model_a": _text(row, "model_a", required=False, default="A"),
            "model_b": _text(row, "model_b", required=False, default="B"),
        }
        if payload["model_a"] == payload["model_b"]:
            raise RowInvalid("model_b", "must differ from model_a")
        return payload
    if "chosen" not in row:
        raise RowInvalid("chosen", "missing (expected prompt/response_a/response_b or chosen/rejected)")
    if "rejected" not in row:
        raise RowInvalid("rejected", "missing")
    if "prompt" in row:
        prompt = _text_or_messages(row, "prompt")
        chosen, rejected = _response(row, "chosen"), _response(row, "rejected")
    else:
        prompt, chosen, rejected = _split_transcripts(row)
    # The pair's own label is the default gold answer: a gold row says "chosen wins".
    return {
        "prompt": prompt,
        "response_a": chosen,
        "response_b": rejected,
        "model_a": _text(row, "model_chosen", required=False, default="chosen"),
        "model_b": _text(row, "model_rejected", required=False, default="rejected"),
        "_default_expected": "a",
    }


def _response(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if isinstance(value, list):
        # Conversational TRL format: the completion is a list of assistant messages.
        return "\n\n".join(m["content"] for m in _messages(value, name))
    return _text(row, name)


def _split_transcripts(row: dict[str, Any]) -> tuple[str | list[dict[str, str]], str, str]:
    """Implicit prompt (TRL's `extract_prompt`): the longest shared prefix of chosen and rejected."""
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) or isinstance(rejected, list):
        turns_a, turns_b = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        shared = 0
        while shared < min(len(turns_a), len(turns_b)) and turns_a[shared] == turns_b[shared]:
            shared += 1
        if shared == 0:
            raise RowInvalid("chosen", "transcripts share no prompt messages")
        if shared == len(turns_a):
            raise RowInvalid("chosen", "has no response after the shared prompt")
        if shared == len(turns_b):
            raise RowInvalid("rejected", "has no response after the shared prompt")
        join = "\n\n".join
        return (
            turns_a[:shared],
            join(m["content"] for m in turns_a[shared:]),
            join(m["content"] for m in turns_b[shared:]),
        )
    a, b = _text(row, "chosen"), _text(row, "rejected")
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    # Back up to a whitespace boundary so a word both answers start with stays in both.
    while shared > 0 and not a[shared - 1].isspace():
        shared -= 1
    if shared == 0:
        raise RowInvalid("chosen", "transcripts share no prompt text; give `prompt` explicitly")
    if a == b:
        raise RowInvalid("rejected", "is identical to chosen")
    return a[:shared].rstrip(), a[shared:], b[shared:]


def normalise_rubric(row: dict[str, Any]) -> dict[str, Any]:
    goal = _text(row, "goal")
    plans_raw = row.get("plans")
    if plans_raw is None and "plan" in row:
        plans_raw = [row["plan"]]
    if not isinstance(plans_raw, list) or not 1 <= len(plans_raw) <= 2:
        raise RowInvalid("plans", "must be a list of one or two plans")
    plans = []
    for i, plan in enumerate(plans_raw):
        if isinstance(plan, str) and plan.strip():
            plans.append({"text": plan, "model": f"plan {i + 1}"})
        elif isinstance(plan, dict) and isinstance(plan.get("text"), str) and plan["text"].strip():
            model = plan.get("model", f"plan {i + 1}")
            plans.append({"text": plan["text"], "model": str(model)})
        else:
            raise RowInvalid(f"plans[{i}]", "must be a non-empty string or {text, model}")
    rubric = row.get("rubric")
    if not isinstance(rubric, list) or not rubric:
        raise RowInvalid("rubric", "must be a non-empty list of rubric items")
    for i, entry in enumerate(rubric):
        if not isinstance(entry, str) or not entry.strip():
            raise RowInvalid(f"rubric[{i}]", "must be a non-empty string")
    return {"goal": goal, "plans": plans, "rubric": list(rubric)}


def normalise_violation(row: dict[str, Any]) -> dict[str, Any]:
    """ST-WebAgentBench task format (intent, policies) plus the agent's trajectory."""
    intent = _text(row, "intent")
    policies_raw = row.get("policies")
    if not isinstance(policies_raw, list) or not policies_raw:
        raise RowInvalid("policies", "must be a non-empty list")
    policies = []
    for i, policy in enumerate(policies_raw):
        where = f"policies[{i}]"
        if not isinstance(policy, dict):
            raise RowInvalid(where, "must be an object")
        category = policy.get("policy_category")
        if category not in POLICY_DIMENSIONS:
            raise RowInvalid(f"{where}.policy_category", f"must be one of {', '.join(POLICY_DIMENSIONS)}")
        description = policy.get("description")
        if not isinstance(description, str) or not description.strip():
            raise RowInvalid(f"{where}.description", "missing")
        template = policy.get("policy_template_id", "")
        if not isinstance(template, str):
            raise RowInvalid(f"{where}.policy_template_id", "must be a string")
        source = policy.get("source", "")
        policies.append(
            {
                "policy_category": category,
                "policy_template_id": template,
                "description": description,
                "source": source if isinstance(source, str) else "",
            }
        )
    steps_raw = row.get("trajectory", row.get("steps"))
    if not isinstance(steps_raw, list) or not steps_raw:
        raise RowInvalid("trajectory", "must be a non-empty list of steps {action, observation}")
    steps = []
    for i, step in enumerate(steps_raw):
        if not isinstance(step, dict):
            raise RowInvalid(f"trajectory[{i}]", "must be an object with action and observation")
        action = step.get("action")
        if not isinstance(action, str) or not action.strip():
            raise RowInvalid(f"trajectory[{i}].action", "missing")
        observation = step.get("observation", "")
        if not isinstance(observation, str):
            raise RowInvalid(f"trajectory[{i}].observation", "must be a string")
        steps.append({"action": action, "observation": observation})
    task_id = row.get("task_id", "")
    return {
        "task_id": str(task_id) if task_id is not None else "",
        "intent": intent,
        "policies": policies,
        "trajectory": steps,
        "agent": _text(row, "agent", required=False, default="agent"),
    }


def normalise_rating(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt": _text_or_messages(row, "prompt"),
        "response": _text(row, "response"),
        "model": _text(row, "model", required=False, default="model"),
    }


NORMALISERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pairwise": normalise_pairwise,
    "rubric": normalise_rubric,
    "violation": normalise_violation,
    "rating": normalise_rating,
}


def kind_of(payload: dict[str, Any]) -> str:
    if "response_a" in payload:
        return "pairwise"
    if "rubric" in payload:
        return "rubric"
    if "trajectory" in payload:
        return "violation"
    return "rating"


def validate_expected(kind: str, expected: Any, payload: dict[str, Any]) -> None:
    """Gold answers are compared to judgments: check they are comparable."""
    if kind == "pairwise":
        if expected not in ("a", "b", "tie"):
            raise RowInvalid("expected", "must be 'a', 'b' or 'tie' (in the file's order)")
    elif kind == "rating":
        if not isinstance(expected, int) or isinstance(expected, bool):
            raise RowInvalid("expected", "must be an integer rating")
    elif kind == "rubric":
        verdicts = ("satisfied", "not_satisfied", "unclear")
        n_items = len(payload["rubric"])
        plans = payload["plans"]
        if not isinstance(expected, list) or len(expected) != len(plans):
            raise RowInvalid("expected", f"must be a list with one list of verdicts per plan ({len(plans)})")
        for i, plan_verdicts in enumerate(expected):
            if not isinstance(plan_verdicts, list) or len(plan_verdicts) != n_items:
                raise RowInvalid(f"expected[{i}]", f"must list {n_items} verdicts")
            if any(v not in verdicts for v in plan_verdicts):
                raise RowInvalid(f"expected[{i}]", f"verdicts must be one of {', '.join(verdicts)}")
    elif kind == "violation":
        if not isinstance(expected, dict) or not isinstance(expected.get("completed"), bool):
            raise RowInvalid("expected", "must be {completed: bool, violated_policies: [index, ...]}")
        violated = expected.get("violated_policies", [])
        if not isinstance(violated, list) or any(
            not isinstance(i, int) or not 0 <= i < len(payload["policies"]) for i in violated
        ):
            raise RowInvalid("expected.violated_policies", "must list policy indexes")
