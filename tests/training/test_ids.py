"""Ids typed by users: ASCII digits in range, or no id at all; never a 500 and never another script's digits."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.ids import parse_id, parse_ids


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("42", 42),
        (" 7 ", 7),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, None),  # past bigint
        ("²", None),  # isdigit() is true for it; int() refuses it
        ("٣", None),  # Arabic-Indic three: int() would read 3
        ("-1", None),
        ("1e3", None),
        ("", None),
        (None, None),
        (["1"], None),
    ],
)
def test_parse_id(raw: Any, expected: int | None) -> None:
    assert parse_id(raw) == expected


def test_parse_ids_takes_comma_lists_and_repeats_in_order_up_to_the_limit() -> None:
    assert parse_ids(["3,x,²,1", "", "2", "4,5"], limit=4) == [3, 1, 2, 4]


@pytest.mark.django_db
@pytest.mark.parametrize("runs", ["²", ",1,,²,", "٣", "9" * 40])
def test_compare_ignores_ids_that_are_not_ids(client_for: Any, researcher: Any, make_run: Any, runs: str) -> None:
    mine = make_run(researcher, name="mine")
    answer = client_for(researcher).get(f"/runs/compare/?runs={runs}&runs={mine.id}")
    assert answer.status_code == 200
    assert [r.id for r in answer.context["runs"]] == [mine.id]
