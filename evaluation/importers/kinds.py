"""One upload row into one item payload, per study kind; gold answers checked against the item.

Canonical payloads:
  pairwise  {prompt, response_a, response_b, model_a, model_b, source[, source_text][, flags]}
            prompt: str or turns [{role, content}]; responses: the final assistant replies (str), or
            turn lists for a flagged row whose transcripts diverge earlier (see evaluation.conversations)
  rubric    {goal, plans: [{text, model}], rubric: [str]}
  violation {task_id, intent, policies: [{policy_category, policy_template_id, description, source}],
             trajectory: [{action, observation[, element, url]}], agent}  (trajectory [] while waiting)
  rating    {prompt, response, model, source}
Any row may carry `gold: true` and `expected` (the gold answer) and an `id`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluation import conversations
from evaluation.conversations import SplitError
from evaluation.importers import stwebagentbench
from evaluation.importers.rows import (
    ParsedAttachment,
    ParsedItem,
    RowInvalid,
    check_no_nul,
    messages,
    text,
    text_or_messages,
)

KINDS = ("pairwise", "rubric", "violation", "rating")

# Fields a CSV header may name, per kind (a header with none of them is not an item file).
COLUMNS: dict[str, frozenset[str]] = {
    "pairwise": frozenset(
        {"prompt", "chosen", "rejected", "response_a", "response_b", "model_a", "model_b", "id", "gold", "expected"}
    ),
    "rubric": frozenset({"goal", "plans", "plan", "rubric", "id", "gold", "expected"}),
    "violation": stwebagentbench.EVALUATOR_COLUMNS,
    "rating": frozenset({"prompt", "response", "messages", "model", "id", "gold", "expected"}),
}
# Cells that hold structure in a CSV (JSON text) rather than text.
JSON_CELLS = frozenset({"plans", "rubric", "policies", "trajectory", "steps", "messages", "expected"})
MESSAGE_CELLS = frozenset({"prompt", "chosen", "rejected", "response", "response_a", "response_b"})


def _response(row: dict[str, Any], name: str) -> str | list[dict[str, str]]:
    value = row.get(name)
    if isinstance(value, list):
        return messages(value, name)
    return text(row, name)


def normalise_pairwise(row: dict[str, Any], *, flag: bool) -> dict[str, Any]:
    """{prompt, response_a, response_b, model_a, model_b} (two systems), or a preference pair
    {chosen, rejected} with or without `prompt`, as HH transcripts, TRL messages or plain strings."""
    if "response_a" in row or "response_b" in row:
        a, b = _response(row, "response_a"), _response(row, "response_b")
        payload: dict[str, Any] = {
            "prompt": text_or_messages(row, "prompt"),
            "response_a": a,
            "response_b": b,
            "model_a": text(row, "model_a", required=False, default="A"),
            "model_b": text(row, "model_b", required=False, default="B"),
            "source": "messages" if isinstance(row.get("prompt"), list) else "text",
        }
        if payload["model_a"] == payload["model_b"]:
            raise RowInvalid("model_b", "must differ from model_a")
        return payload
    if "chosen" not in row:
        raise RowInvalid("chosen", "missing (expected prompt/response_a/response_b or chosen/rejected)")
    if "rejected" not in row:
        raise RowInvalid("rejected", "missing")
    chosen = text_or_messages(row, "chosen", allow_empty=True)
    rejected = text_or_messages(row, "rejected", allow_empty=True)
    try:
        if "prompt" in row:
            split = conversations.split_explicit(text_or_messages(row, "prompt"), chosen, rejected, flag=flag)
        elif isinstance(chosen, list) != isinstance(rejected, list):
            raise RowInvalid("rejected", "must be the same form as chosen (both strings or both message lists)")
        elif isinstance(chosen, list) and isinstance(rejected, list):
            split = conversations.split_turns(chosen, rejected, source="messages", flag=flag)
        elif isinstance(chosen, str) and isinstance(rejected, str):
            if conversations.has_hh_markers(chosen) or conversations.has_hh_markers(rejected):
                split = conversations.split_hh(chosen, rejected, flag=flag)
            else:
                split = conversations.split_plain(chosen, rejected, flag=flag)
    except SplitError as exc:
        raise RowInvalid(exc.field, exc.message) from None
    # The pair's own label is the default gold answer: a gold row says "chosen wins".
    return {
        **split.payload_fields(),
        "model_a": text(row, "model_chosen", required=False, default="chosen"),
        "model_b": text(row, "model_rejected", required=False, default="rejected"),
        "_default_expected": "a",
    }


def normalise_rubric(row: dict[str, Any], *, flag: bool) -> dict[str, Any]:
    goal = text(row, "goal")
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


def normalise_rating(row: dict[str, Any], *, flag: bool) -> dict[str, Any]:
    """{prompt, response, model}, or TRL's {messages} whose final assistant turn is the response."""
    if "response" not in row and "messages" in row:
        turns = messages(row["messages"], "messages")
        if turns[-1]["role"] != "assistant":
            raise RowInvalid("messages", "must end with an assistant turn (the response to rate)")
        prompt: str | list[dict[str, str]] = turns[:-1]
        response, source = turns[-1]["content"], "messages"
    else:
        prompt, response, source = conversations.split_completion(
            text_or_messages(row, "prompt"), text_or_messages(row, "response")
        )
    if not response.strip():
        raise RowInvalid("response", "must not be empty")
    return {
        "prompt": prompt,
        "response": response,
        "model": text(row, "model", required=False, default="model"),
        "source": source,
    }


NORMALISERS: dict[str, Callable[..., dict[str, Any]]] = {
    "pairwise": normalise_pairwise,
    "rubric": normalise_rubric,
    "rating": normalise_rating,
}


def parse_row(kind: str, row: dict[str, Any], line: int, *, flag: bool) -> ParsedItem | ParsedAttachment:
    """One row of an upload; raises RowInvalid naming the field."""
    check_no_nul(row, "")
    if kind == "violation":
        parsed = stwebagentbench.task_or_attachment(row, line)
        if isinstance(parsed, ParsedAttachment):
            return parsed
        payload = parsed.payload
    else:
        payload = NORMALISERS[kind](row, flag=flag)
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
    if external_id is None:
        external_id = ""
    if not isinstance(external_id, str | int) or isinstance(external_id, bool):
        raise RowInvalid("id", "must be a string or a number")
    if is_gold:
        if kind == "violation" and not payload["trajectory"]:
            raise RowInvalid("gold", "a gold task needs its trajectory")
        validate_expected(kind, expected, payload)
    waiting = kind == "violation" and not payload["trajectory"]
    return ParsedItem(line, payload, is_gold, expected, str(external_id), waiting=waiting)


def csv_cells(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """A CSV record's cells as typed values: JSON for structured cells, booleans and numbers for gold answers."""
    import orjson

    out: dict[str, Any] = {}
    for name, cell in row.items():
        if cell == "":
            continue
        value: Any = cell
        stripped = cell.strip()
        if name in JSON_CELLS and stripped[:1] in ("[", "{"):
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                raise RowInvalid(name, "holds text that starts like JSON but is not valid JSON") from None
        elif name in MESSAGE_CELLS and stripped.startswith('[{"role"'):
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                value = cell
        elif name in ("gold", "is_gold"):
            lowered = stripped.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise RowInvalid(name, "must be true or false")
            value = lowered in ("true", "1", "yes")
        elif name == "expected" and kind == "rating":
            try:
                value = int(stripped)
            except ValueError:
                raise RowInvalid(name, "must be an integer rating") from None
        out[name] = value
    return out


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
