"""Upload parsing: every accepted format normalises; a bad line names its line and field."""

from __future__ import annotations

import json

import pytest

from evaluation.importers import parse_jsonl


def _jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def test_pairwise_prompt_chosen_rejected() -> None:
    result = parse_jsonl(_jsonl({"prompt": "2+2?", "chosen": "4", "rejected": "5"}), kind="pairwise")
    assert result.ok
    payload = result.items[0].payload
    assert payload == {
        "prompt": "2+2?",
        "response_a": "4",
        "response_b": "5",
        "model_a": "chosen",
        "model_b": "rejected",
    }


def test_pairwise_model_format() -> None:
    row = {"prompt": "p", "response_a": "x", "response_b": "y", "model_a": "m1", "model_b": "m2"}
    result = parse_jsonl(_jsonl(row), kind="pairwise")
    assert result.items[0].payload["model_b"] == "m2"


def test_pairwise_whole_transcript_strings_split_at_shared_prefix() -> None:
    row = {"chosen": "Human: hi there\n\nAssistant: hello friend", "rejected": "Human: hi there\n\nAssistant: go away"}
    payload = parse_jsonl(_jsonl(row), kind="pairwise").items[0].payload
    assert payload["prompt"] == "Human: hi there\n\nAssistant:"
    assert payload["response_a"] == "hello friend"
    assert payload["response_b"] == "go away"


def test_pairwise_whole_transcript_messages() -> None:
    user = {"role": "user", "content": "hi"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "hello"}],
        "rejected": [user, {"role": "assistant", "content": "bye"}],
    }
    payload = parse_jsonl(_jsonl(row), kind="pairwise").items[0].payload
    assert payload["prompt"] == [user]
    assert (payload["response_a"], payload["response_b"]) == ("hello", "bye")


def test_bad_line_names_line_and_field() -> None:
    data = _jsonl(
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a"},
        "",
        "{not json",
        {"prompt": "p", "response_a": "x", "response_b": 3, "model_a": "m", "model_b": "m"},
    )
    result = parse_jsonl(data, kind="pairwise")
    assert not result.ok
    assert len(result.items) == 1
    assert [(e.line, e.field) for e in result.errors] == [(2, "rejected"), (4, ""), (5, "model_b")]
    assert str(result.errors[0]) == "line 2, field 'rejected': missing"


def test_gold_pairwise_defaults_to_chosen_and_validates_expected() -> None:
    data = _jsonl(
        {"prompt": "p", "chosen": "a", "rejected": "b", "gold": True},
        {"prompt": "p", "response_a": "a", "response_b": "b", "gold": True, "expected": "c"},
    )
    result = parse_jsonl(data, kind="pairwise")
    assert result.items[0].is_gold and result.items[0].expected == "a"
    assert (result.errors[0].line, result.errors[0].field) == (2, "expected")


def test_rubric_row() -> None:
    row = {"goal": "cure X", "plans": ["plan one", {"text": "plan two", "model": "m2"}], "rubric": ["a", "b"]}
    payload = parse_jsonl(_jsonl(row), kind="rubric").items[0].payload
    assert payload["plans"] == [{"text": "plan one", "model": "plan 1"}, {"text": "plan two", "model": "m2"}]


def test_rubric_three_plans_refused() -> None:
    row = {"goal": "g", "plans": ["a", "b", "c"], "rubric": ["x"]}
    result = parse_jsonl(_jsonl(row), kind="rubric")
    assert (result.errors[0].line, result.errors[0].field) == (1, "plans")


def _violation_row(**overrides: object) -> dict:
    row = {
        "task_id": 47,
        "intent": "Create a project",
        "policies": [
            {
                "policy_template_id": "ask_the_user",
                "policy_category": "user_consent",
                "source": "user",
                "description": "Ask before creating.",
            }
        ],
        "trajectory": [{"action": "click('12')", "observation": "page"}],
    }
    row.update(overrides)
    return row


def test_violation_st_webagentbench_task_format() -> None:
    payload = parse_jsonl(_jsonl(_violation_row()), kind="violation").items[0].payload
    assert payload["task_id"] == "47"
    assert payload["policies"][0]["policy_category"] == "user_consent"
    assert payload["trajectory"][0]["action"] == "click('12')"


def test_violation_unknown_dimension_names_policy_field() -> None:
    bad = _violation_row(policies=[{"policy_category": "vibes", "description": "d"}])
    result = parse_jsonl(_jsonl(_violation_row(), bad), kind="violation")
    assert (result.errors[0].line, result.errors[0].field) == (2, "policies[0].policy_category")


def test_violation_step_missing_action() -> None:
    bad = _violation_row(trajectory=[{"action": "a"}, {"observation": "o"}])
    result = parse_jsonl(_jsonl(bad), kind="violation")
    assert result.errors[0].field == "trajectory[1].action"


def test_rating_row() -> None:
    payload = parse_jsonl(_jsonl({"prompt": "p", "response": "r"}), kind="rating").items[0].payload
    assert payload == {"prompt": "p", "response": "r", "model": "model"}


def test_empty_file_is_an_error() -> None:
    assert not parse_jsonl(b"\n\n", kind="rating").ok


@pytest.mark.parametrize("kind", ["pairwise", "rubric", "violation", "rating"])
def test_non_object_line_refused(kind: str) -> None:
    result = parse_jsonl(b"[1, 2]", kind=kind)
    assert result.errors[0].message == "each line must be a JSON object"
