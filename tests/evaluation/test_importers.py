"""Upload parsing: every container and row format normalises; a bad row names its line and field; a wrong
container is one message."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.importers import containers as containers_module
from evaluation.importers import parse_all, parse_upload

pytestmark = pytest.mark.sqlite  # no database: runs in both suites


def _jsonl(*rows: object) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def test_pairwise_prompt_chosen_rejected() -> None:
    result = parse_all(_jsonl({"prompt": "2+2?", "chosen": "4", "rejected": "5"}), kind="pairwise")
    assert result.ok
    payload = result.items[0].payload
    assert payload == {
        "prompt": "2+2?",
        "response_a": "4",
        "response_b": "5",
        "model_a": "chosen",
        "model_b": "rejected",
        "source": "text",
    }


def test_pairwise_model_format() -> None:
    row = {"prompt": "p", "response_a": "x", "response_b": "y", "model_a": "m1", "model_b": "m2"}
    result = parse_all(_jsonl(row), kind="pairwise")
    assert result.items[0].payload["model_b"] == "m2"


def test_pairwise_whole_transcripts_split_by_turns_not_characters() -> None:
    # Both replies start with "I": a character-prefix cut would show "Assistant: I" in the prompt.
    row = {
        "chosen": "\n\nHuman: hi there\n\nAssistant: I am glad you asked.",
        "rejected": "\n\nHuman: hi there\n\nAssistant: I would rather not.",
    }
    payload = parse_all(_jsonl(row), kind="pairwise").items[0].payload
    assert payload["prompt"] == [{"role": "user", "content": "hi there"}]
    assert payload["response_a"] == "I am glad you asked."
    assert payload["response_b"] == "I would rather not."
    assert payload["source"] == "hh"


def test_pairwise_whole_transcript_messages() -> None:
    user = {"role": "user", "content": "hi"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "hello"}],
        "rejected": [user, {"role": "assistant", "content": "bye"}],
    }
    payload = parse_all(_jsonl(row), kind="pairwise").items[0].payload
    assert payload["prompt"] == [user]
    assert (payload["response_a"], payload["response_b"]) == ("hello", "bye")


def test_unsplittable_row_is_an_error_or_a_flag() -> None:
    row = {"chosen": "\n\nHuman: hi\n\nAssistant: ", "rejected": "\n\nHuman: hi\n\nAssistant: hello"}
    refused = parse_all(_jsonl(row), kind="pairwise")
    assert [(e.line, e.field) for e in refused.errors] == [(1, "chosen")]
    flagged = parse_all(_jsonl(row), kind="pairwise", flag_unsplittable=True)
    assert flagged.ok and flagged.items[0].payload["flags"] == ["empty_reply_a"]


def test_bad_line_names_line_and_field() -> None:
    data = _jsonl(
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a"},
        "",
        "{not json",
        {"prompt": "p", "response_a": "x", "response_b": 3, "model_a": "m", "model_b": "m"},
    )
    result = parse_all(data, kind="pairwise")
    assert not result.ok
    assert len(result.items) == 1
    assert [(e.line, e.field) for e in result.errors] == [(2, "rejected"), (4, ""), (5, "model_b")]
    assert str(result.errors[0]) == "line 2, field 'rejected': missing"


def test_nul_character_is_refused_by_field() -> None:
    result = parse_all(_jsonl({"prompt": "p\u0000", "chosen": "a", "rejected": "b"}), kind="pairwise")
    assert (result.errors[0].line, result.errors[0].field) == (1, "prompt")
    assert "NUL" in result.errors[0].message


def test_gold_pairwise_defaults_to_chosen_and_validates_expected() -> None:
    data = _jsonl(
        {"prompt": "p", "chosen": "a", "rejected": "b", "gold": True},
        {"prompt": "p", "response_a": "a", "response_b": "b", "gold": True, "expected": "c"},
    )
    result = parse_all(data, kind="pairwise")
    assert result.items[0].is_gold and result.items[0].expected == "a"
    assert (result.errors[0].line, result.errors[0].field) == (2, "expected")


def test_rubric_row() -> None:
    row = {"goal": "cure X", "plans": ["plan one", {"text": "plan two", "model": "m2"}], "rubric": ["a", "b"]}
    payload = parse_all(_jsonl(row), kind="rubric").items[0].payload
    assert payload["plans"] == [{"text": "plan one", "model": "plan 1"}, {"text": "plan two", "model": "m2"}]


def test_rubric_three_plans_refused() -> None:
    row = {"goal": "g", "plans": ["a", "b", "c"], "rubric": ["x"]}
    result = parse_all(_jsonl(row), kind="rubric")
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
    payload = parse_all(_jsonl(_violation_row()), kind="violation").items[0].payload
    assert payload["task_id"] == "47"
    assert payload["policies"][0]["policy_category"] == "user_consent"
    assert payload["trajectory"][0]["action"] == "click('12')"


def test_violation_short_category_names_map_to_dimensions() -> None:
    policy = {"policy_category": "exact_task", "description": "Do exactly the task."}
    payload = parse_all(_jsonl(_violation_row(policies=[policy])), kind="violation").items[0].payload
    assert payload["policies"][0]["policy_category"] == "strict_execution"


def test_violation_unknown_dimension_names_policy_field() -> None:
    bad = _violation_row(policies=[{"policy_category": "vibes", "description": "d"}])
    result = parse_all(_jsonl(_violation_row(), bad), kind="violation")
    assert (result.errors[0].line, result.errors[0].field) == (2, "policies[0].policy_category")


def test_violation_step_missing_action() -> None:
    bad = _violation_row(trajectory=[{"action": "a"}, {"observation": "o"}])
    result = parse_all(_jsonl(bad), kind="violation")
    assert result.errors[0].field == "trajectory[1].action"


def test_violation_task_without_trajectory_waits() -> None:
    row = _violation_row()
    del row["trajectory"]
    item = parse_all(_jsonl(row), kind="violation").items[0]
    assert item.waiting and item.payload["trajectory"] == []


def test_rating_row() -> None:
    payload = parse_all(_jsonl({"prompt": "p", "response": "r"}), kind="rating").items[0].payload
    assert payload == {"prompt": "p", "response": "r", "model": "model", "source": "text"}


def test_rating_from_trl_messages() -> None:
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    payload = parse_all(_jsonl({"messages": turns}), kind="rating").items[0].payload
    assert payload["prompt"] == turns[:1] and payload["response"] == "hello"


def test_empty_file_is_an_error() -> None:
    assert not parse_all(b"\n\n", kind="rating").ok


@pytest.mark.parametrize("kind", ["pairwise", "rubric", "violation", "rating"])
def test_non_object_line_refused(kind: str) -> None:
    result = parse_all(b'{"prompt": "p"}\n[1, 2]', kind=kind)
    assert (result.errors[-1].line, result.errors[-1].message) == (2, "each line must be a JSON object")


# --------------------------------------------------------------------------- containers

ROWS = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}", "rejected": f"Nope {i}"} for i in range(5)]


def _csv(rows: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def _parquet(rows: list[dict[str, str]]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("container", "data"),
    [
        ("jsonl", _jsonl(*ROWS)),
        ("json", json.dumps(ROWS, indent=2).encode()),
        ("csv", _csv(ROWS)),
        ("parquet", _parquet(ROWS)),
        ("jsonl+gzip", gzip.compress(_jsonl(*ROWS))),
        ("json+gzip", gzip.compress(json.dumps(ROWS).encode())),
    ],
)
def test_every_container_gives_the_same_items(container: str, data: bytes) -> None:
    result = parse_all(data, kind="pairwise")
    assert result.ok and result.container == container
    assert [i.payload["response_a"] for i in result.items] == [f"Answer {i}" for i in range(5)]


def test_json_array_reports_the_line_an_item_starts_on() -> None:
    data = json.dumps([ROWS[0], {"prompt": "p", "chosen": "a"}], indent=2).encode()
    result = parse_all(data, kind="pairwise")
    assert (result.errors[0].line, result.errors[0].field) == (7, "rejected")


def test_json_array_is_decoded_across_read_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers_module, "READ_CHUNK", 7)  # every item straddles several reads
    rows = [{**ROWS[0], "prompt": "ünïcødé " * 20 + str(i)} for i in range(30)]
    result = parse_all(json.dumps(rows).encode(), kind="pairwise")
    assert result.ok and len(result.items) == 30 and result.items[-1].payload["prompt"].endswith("29")


def test_csv_cells_hold_json_for_structured_fields() -> None:
    rows = [{"goal": "g", "plans": json.dumps(["p1", "p2"]), "rubric": json.dumps(["a", "b"]), "gold": "false"}]
    result = parse_all(_csv(rows), kind="rubric")
    assert result.ok and result.items[0].payload["rubric"] == ["a", "b"]


def test_csv_reports_the_line_a_record_starts_on() -> None:
    data = b'prompt,chosen,rejected\n"multi\nline",a,b\np,a,\n'
    result = parse_all(data, kind="pairwise")
    assert [(e.line, e.field) for e in result.errors] == [(4, "rejected")]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (json.dumps({"items": ROWS}, indent=2).encode(), "one JSON object"),
        (b"PK\x03\x04rest of a zip", "ZIP archive"),
        ("prompt,chosen\n".encode("utf-16"), "UTF-16"),
        (b"hello world\nthis is not data\n", "header row"),
        (b"[1, 2, 3]", "JSON array of int values"),
    ],
)
def test_wrong_container_is_one_message(data: bytes, says: str) -> None:
    result = parse_all(data, kind="pairwise")
    assert result.error_count == 1 and result.errors[0].line == 0 and says in result.errors[0].message


def test_violation_csv_must_be_evaluator_output() -> None:
    result = parse_all(b"task_id,intent\n1,do it\n", kind="violation")
    assert result.error_count == 1 and "evaluator output" in result.errors[0].message


def test_upload_streams_from_a_file_object() -> None:
    upload = parse_upload(io.BytesIO(_jsonl(*ROWS)), kind="pairwise")
    first = next(upload.records)
    assert first.line == 1 and upload.position() > 0
