"""Datasets in TRL's columns load; bad files are refused naming the line (or row) and field."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.engine.data import (
    DatasetError,
    PreferenceExample,
    PromptExample,
    SupervisedExample,
    load_dataset,
    step_batch,
)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_prompt_completion_and_messages_rows_load(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {"prompt": "2+2=", "completion": "4"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        ],
    )
    rows = load_dataset(path, kind="supervised")
    assert rows[0] == SupervisedExample("2+2=", "4")
    assert rows[1] == SupervisedExample("user: hi\nassistant: ", "hello")


def test_preference_rows_accept_conversational_completions(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pref.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "good"}],
                "rejected": "bad",
            }
        ],
    )
    assert load_dataset(path, kind="preference") == [PreferenceExample("user: q\nassistant: ", "good", "bad")]


def test_prompt_rows_carry_answer_and_rubric(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "solution": 2, "rubric": ["is a number"]}])
    assert load_dataset(path, kind="prompt") == [PromptExample("1+1=", "2", ("is a number",))]


def test_missing_field_names_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "pref.jsonl",
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
    )
    with pytest.raises(DatasetError, match=r"pref\.jsonl:line 2: missing field 'rejected'"):
        load_dataset(path, kind="preference")


def test_wrong_type_names_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": 3}])
    with pytest.raises(DatasetError, match=r"line 1: field 'completion' must be a string, got int"):
        load_dataset(path, kind="supervised")


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.jsonl:line 2: not valid JSON"):
        load_dataset(path, kind="supervised")


def test_bad_message_role_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DatasetError, match=r"line 1: field 'messages'\[0\]\.role must be one of"):
        load_dataset(path, kind="supervised")


def test_parquet_loads_and_bad_row_names_row(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", "c2"]}), good)
    assert load_dataset(good, kind="supervised")[1] == SupervisedExample("p2", "c2")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", ""]}), bad)
    with pytest.raises(DatasetError, match=r"bad\.parquet:row 2: field 'completion' is empty"):
        load_dataset(bad, kind="supervised")


def test_not_a_parquet_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("nope", encoding="utf-8")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_dataset(path, kind="supervised")


def test_step_batch_is_a_function_of_seed_and_step() -> None:
    examples = [SupervisedExample(str(i), "x") for i in range(10)]
    first = step_batch(examples, batch_size=4, step=3, seed=7)
    assert first == step_batch(examples, batch_size=4, step=3, seed=7)
    epoch = [e for s in range(1, 6) for e in step_batch(examples, batch_size=2, step=s, seed=7)]
    assert sorted(e.prompt for e in epoch) == sorted(e.prompt for e in examples)  # one epoch covers all once
