"""Ids typed by users: ASCII digits in range, or no id at all; never a 500 and never another script's digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

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


@pytest.mark.django_db
def test_a_model_path_under_a_run_folder_that_is_no_run_id_is_a_field_error(
    client_for: Any, researcher: Any, make_run: Any
) -> None:
    run = make_run(researcher, name="sampled")
    checkpoint = run.checkpoints.create(step=1, path=str(Path(settings.ARTIFACT_ROOT) / "runs" / str(run.id) / "c"))
    path = Path(settings.ARTIFACT_ROOT) / "runs" / "²" / "checkpoint-1"
    data = {
        "checkpoints": [checkpoint.pk],
        "model_paths": str(path),
        "prompt_source": "run",
        "prompt_run": run.pk,
        "max_prompts": 4,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_new_tokens": 8,
        "n": 1,
        "seed": 0,
        "backend": "hf",
        "queue": "gpu",
        "study_kind": "pairwise",
        "overlap": 1,
    }
    answer = client_for(researcher).post("/samples/new/", data)
    assert answer.status_code == 422
    assert "not a folder of a run you can see" in " ".join(answer.context["form"].errors["model_paths"])
