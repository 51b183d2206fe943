"""Dataset files are checked when a run is launched (a field error naming the field, never a queued run that dies
with a traceback), and "Train on this" sizes the truncation limits from the exported rows' token lengths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from arbiter.accounts.models import User
from artifacts.models import ArtifactKind
from artifacts.services import register_artifact
from training.models import Run
from training.services import runs


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def _tmp_is_a_dataset_root(settings: Any, tmp_path: Path) -> None:
    # Launches read only what the researcher may read (artifacts.access): these files stand in for a folder
    # an admin opened to every researcher, where a missing file may be named as missing.
    settings.ARBITER_DATASET_ROOTS = [str(tmp_path)]


PAIRS = [{"prompt": f"question {i}: ", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(12)]


def _launch_errors(owner: User, recipe: str, config: dict[str, Any]) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        runs.launch_run(owner=owner, recipe=recipe, config=config)
    assert Run.objects.count() == 0  # nothing queued
    return caught.value.message_dict


@pytest.mark.django_db
def test_missing_file_is_an_error_on_the_field(researcher: User, tmp_path: Path) -> None:
    errors = _launch_errors(researcher, "dpo", {"dataset_path": str(tmp_path / "nope.jsonl")})
    assert list(errors) == ["dataset_path"] and "no such file" in errors["dataset_path"][0]


@pytest.mark.django_db
def test_wrong_columns_name_what_the_recipe_reads_and_what_the_file_has(researcher: User, tmp_path: Path) -> None:
    rubric_rows = [{"prompt": "goal", "response": "a plan", "score": 0.5}]
    path = _jsonl(tmp_path / "rubric.jsonl", rubric_rows)
    errors = _launch_errors(researcher, "dpo", {"dataset_path": path})
    message = errors["dataset_path"][0]
    assert "line 1" in message and "'chosen'" in message
    assert "prompt, chosen, rejected" in message and "prompt, response, score" in message


@pytest.mark.django_db
def test_a_bad_eval_file_is_named_as_the_eval_field(researcher: User, tmp_path: Path) -> None:
    good = _jsonl(tmp_path / "train.jsonl", PAIRS)
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y", "rejected": "z"}\n{not json\n', encoding="utf-8")
    errors = _launch_errors(researcher, "dpo", {"dataset_path": good, "eval_dataset_path": str(bad), "eval_steps": 5})
    assert list(errors) == ["eval_dataset_path"] and "line 2" in errors["eval_dataset_path"][0]


@pytest.mark.django_db
def test_data_that_truncation_empties_is_refused_at_launch(researcher: User, tmp_path: Path) -> None:
    # Long prompts with the same start and answers that differ only at their end: with max_length 16 and no
    # prompt limit the prompt takes 8 tokens, the answers' first 8 tokens are equal, and every pair is identical.
    rows = [{"prompt": "p" * 40, "chosen": "same start " + "a" * 9, "rejected": "same start " + "b" * 9}] * 4
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    errors = _launch_errors(researcher, "dpo", {"dataset_path": path, "max_length": 16})
    assert "4 of 4 examples are unusable" in errors["dataset_path"][0]
    # The same file with room for the answers launches.
    run = runs.launch_run(owner=researcher, recipe="dpo", config={"dataset_path": path, "max_length": 64})
    assert run.status == "queued"


@pytest.mark.django_db
def test_launch_form_puts_the_error_next_to_the_field(client_for: Any, researcher: User, tmp_path: Path) -> None:
    response = client_for(researcher).post(
        "/runs/new/?recipe=sft",
        {"recipe": "sft", "queue": "gpu", "cfg_dataset_path": str(tmp_path / "missing.jsonl")},
    )
    assert response.status_code == 422
    assert "no such file" in response.context["form"].errors["cfg_dataset_path"][0]
    assert Run.objects.count() == 0


@pytest.mark.django_db
def test_train_on_this_sizes_limits_from_the_data_and_names_the_model(
    client_for: Any, researcher: User, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    # 19 short prompts and one very long one; answers up to 60 characters (the tiny tokenizer is by character).
    rows = [{"prompt": f"q{i:02d}", "chosen": "c" * (20 + i), "rejected": "r" * 5} for i in range(19)]
    rows.append({"prompt": "x" * 500, "chosen": "c" * 60, "rejected": "r"})
    path = _jsonl(tmp_path / "artifacts" / "exports" / "study-1" / "v1.jsonl", rows)
    register_artifact(owner=researcher, kind=ArtifactKind.DATASET, uri=path)  # the researcher's own export
    page = client_for(researcher).get("/runs/new/", {"recipe": "dpo", "dataset": path})
    form = page.context["form"]
    profile = page.context["sizing"].profile
    # Prompts are BOS + 3 characters except the outlier (95th percentile 4 tokens); completions + EOS up to 61.
    assert profile.prompt == (4, 4, 501) and profile.completion[2] == 61
    assert form.initial["cfg_max_completion_length"] == 64  # every answer whole (rounded up to 8)
    assert form.initial["cfg_max_prompt_length"] == 8  # the 95th percentile, not the outlier
    assert form.initial["cfg_max_length"] == 72
    assert (profile.prompts_cut, profile.completions_cut, profile.unusable) == (1, 0, 0)
    html = page.content.decode()
    assert "Trains <strong>tiny</strong>" in html and 'value="72"' in html


@pytest.mark.django_db
def test_train_on_this_does_not_read_files_outside_the_artifact_store(
    client_for: Any, researcher: User, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    path = _jsonl(tmp_path / "elsewhere.jsonl", PAIRS)
    page = client_for(researcher).get("/runs/new/", {"recipe": "dpo", "dataset": path})
    assert page.context["sizing"].profile is None
    assert "cfg_max_length" not in page.context["form"].initial


@pytest.mark.django_db
def test_train_on_this_reads_only_what_the_researcher_may_read(
    client_for: Any, researcher: User, other_researcher: User, settings: Any, tmp_path: Path
) -> None:
    """Another researcher's private export in the store is neither sized nor told apart from a missing file (the
    sizing showed its row count and token lengths); a relative model path is not loaded from the web host."""
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    path = _jsonl(tmp_path / "artifacts" / "exports" / "study-1" / "v1.jsonl", PAIRS)
    register_artifact(owner=researcher, kind=ArtifactKind.DATASET, uri=path)
    assert client_for(researcher).get("/runs/new/", {"recipe": "dpo", "dataset": path}).context["sizing"].profile
    missing = str(Path(path).with_name("v2.jsonl"))

    def shown(dataset: str, model: str = "tiny") -> tuple[Any, str]:
        page = client_for(other_researcher).get("/runs/new/", {"recipe": "dpo", "dataset": dataset, "model": model})
        sizing = page.context["sizing"]
        return sizing.profile, sizing.note

    assert shown(path)[0] is None
    assert shown(path) == shown(missing)
    own = _jsonl(tmp_path / "artifacts" / "exports" / "study-2" / "v1.jsonl", PAIRS)
    register_artifact(owner=other_researcher, kind=ArtifactKind.DATASET, uri=own)
    assert shown(own)[0] is not None  # their own export is sized
    assert shown(own, model="../../x")[0] is None and shown(own, model="a/b/c")[0] is None  # not hub ids


@pytest.mark.django_db
def test_runs_api_launch_answers_422_naming_the_config_field(client: Any, researcher: User, tmp_path: Path) -> None:
    _, key = runs.issue_api_token(user=researcher, name="k")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"recipe": "reward_model", "config": {"dataset_path": str(tmp_path / "gone.jsonl")}}
    response = client.post("/api/runs/launch/", body, content_type="application/json", headers=headers)
    assert response.status_code == 422
    assert response.json()["field"] == "config.dataset_path" and "no such file" in response.json()["error"]
    assert Run.objects.count() == 0
    body["config"]["dataset_path"] = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    response = client.post("/api/runs/launch/", body, content_type="application/json", headers=headers)
    assert response.status_code == 201
    run = Run.objects.get()
    assert (run.id, run.recipe, run.status) == (response.json()["id"], "reward_model", "queued")


@pytest.mark.django_db
def test_the_cup_reward_without_its_process_reward_model_is_refused_on_that_field(researcher: User) -> None:
    errors = _launch_errors(researcher, "grpo", {"reward_funcs": ["numeric_answer", "cup"]})
    assert list(errors) == ["process_reward_model_path"]


@pytest.mark.django_db
def test_train_on_this_names_the_model_for_a_recipe_without_limits(
    client_for: Any, researcher: User, settings: Any, tmp_path: Path
) -> None:
    settings.ARTIFACT_ROOT = str(tmp_path / "artifacts")
    path = _jsonl(tmp_path / "artifacts" / "prompts.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    page = client_for(researcher).get("/runs/new/", {"recipe": "grpo", "dataset": path, "model": "tiny"})
    assert "Trains <strong>tiny</strong>" in page.content.decode()
    assert page.context["sizing"].profile is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"reward_funcs": ["numeric_answer"], "reward_weights": [float("inf")]}, "reward_weights"),
        ({"reward_funcs": ["numeric_answer"], "reward_weights": [float("nan")]}, "reward_weights"),
        ({"reward_funcs": ["numeric_answer"], "reward_weights": [1e9]}, "reward_weights"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"beta": float("nan")}, "beta"),
    ],
)
def test_an_infinite_or_nan_number_in_a_config_is_refused_on_its_field(
    researcher: User, config: dict[str, Any], field: str
) -> None:
    """JSON has no Infinity or NaN: PostgreSQL refused to store such a config (a 500 at launch)."""
    errors = _launch_errors(researcher, "grpo", config)
    assert [k.split(".")[0] for k in errors] == [field], errors  # reward_weights.0: the item at fault


@pytest.mark.django_db
@pytest.mark.parametrize("weight", ["inf", "1e400", "nan"])
def test_the_launch_form_refuses_an_infinite_reward_weight_with_a_422(
    client_for: Any, researcher: User, weight: str
) -> None:
    response = client_for(researcher).post(
        "/runs/new/?recipe=demo_grpo",
        {"recipe": "demo_grpo", "queue": "gpu", "cfg_reward_weights": weight, "cfg_reward_funcs": "numeric_answer"},
    )
    assert response.status_code == 422 and "cfg_reward_weights" in response.context["form"].errors
    assert Run.objects.count() == 0
