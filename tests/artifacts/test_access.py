"""Issue 12.1: a run reads only models and datasets its launching user may read, and a refusal never tells
whether a path exists. Issue 12.3: a run token records checkpoints only inside its run's own location."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from arbiter.accounts.models import User
from artifacts import access
from artifacts.models import Artifact, ArtifactKind
from artifacts.services import register_artifact
from evaluation import export
from evaluation.models import ExportJob
from tests.loop.conftest import judge
from training.models import Run, RunStatus
from training.services import ingest, runs

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(settings: Any, tmp_path: Path) -> Path:
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_STORE_URL = ""
    settings.ARBITER_MODEL_ROOTS = []
    settings.ARBITER_DATASET_ROOTS = []
    settings.ARTIFACT_ROOT.mkdir()
    return Path(settings.ARTIFACT_ROOT)


def checkpoint_of(owner: User, root: Path, *, shared: bool = False) -> str:
    """A run of `owner` with a checkpoint folder on disk, recorded as its engine would record it."""
    run = Run.objects.create(owner=owner, name="a", recipe="dpo", status=RunStatus.SUCCEEDED, shared=shared)
    folder = root / "runs" / str(run.id) / "checkpoint-10"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    ingest.record_checkpoint(run=run, step=10, path=str(folder))
    return str(folder)


def refusal(user: User, **config: Any) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as info:
        runs.launch_run(owner=user, recipe="dpo", config={"max_steps": 2, **config})
    return info.value.message_dict


def launches(user: User, **config: Any) -> bool:
    return runs.launch_run(owner=user, recipe="dpo", config={"max_steps": 2, **config}).pk is not None


def test_another_researchers_private_checkpoint_is_refused_like_a_missing_path(
    researcher: User, other_researcher: User, root: Path
) -> None:
    private = checkpoint_of(researcher, root)
    answers = [
        refusal(other_researcher, model_name_or_path=value)
        for value in (
            private,
            f"file://{private}",
            private + "/../checkpoint-10",
            str(root / "runs" / "999999" / "checkpoint-10"),  # does not exist
            "/etc",  # exists, outside everything
            "/no/such/folder",
            "a/b/c",  # relative, not a hub id
        )
    ]
    assert answers[0] == {"model_name_or_path": [access.MODEL_ERROR]}
    assert all(a == answers[0] for a in answers), answers  # one answer: no existence oracle


def test_own_and_shared_checkpoints_are_accepted_in_every_model_field(
    researcher: User, other_researcher: User, root: Path
) -> None:
    own = checkpoint_of(researcher, root)
    assert launches(researcher, model_name_or_path=own, ref_model_name_or_path=f"file://{own}")
    shared = checkpoint_of(researcher, root, shared=True)
    assert launches(other_researcher, model_name_or_path=shared)
    private = checkpoint_of(researcher, root)
    assert set(refusal(other_researcher, model_name_or_path=shared, ref_model_name_or_path=private)) == {
        "ref_model_name_or_path"
    }


def test_grpo_reward_and_judge_models_are_checked(researcher: User, other_researcher: User, root: Path) -> None:
    private = checkpoint_of(researcher, root)
    with pytest.raises(ValidationError) as info:
        runs.launch_run(
            owner=other_researcher,
            recipe="grpo",
            config={"reward_model_path": private, "rubric_judge_path": "/etc", "max_steps": 2},
        )
    assert info.value.message_dict == {
        "reward_model_path": [access.MODEL_ERROR],
        "rubric_judge_path": [access.MODEL_ERROR],
    }


def test_a_study_export_is_readable_by_whoever_may_read_the_study(
    researcher: User, other_researcher: User, annotator: User, root: Path, make_study: Any
) -> None:
    study = make_study(kind="pairwise", n_items=2, annotators=[annotator])
    judge(study, annotator, ["a", "b"])
    queued = ExportJob.objects.create(study=study, requested_by=researcher, format="reward")
    job = export.run_export(export_id=queued.pk)
    assert job is not None
    artifact = Artifact.objects.get(export=job)
    assert artifact.kind == ArtifactKind.DATASET and artifact.sha256 == job.sha256
    assert launches(researcher, dataset_path=job.path)
    missing = str(Path(job.path).with_name("nothing.jsonl"))
    assert refusal(other_researcher, dataset_path=job.path) == refusal(other_researcher, dataset_path=missing)
    assert refusal(other_researcher, dataset_path=job.path) == {"dataset_path": [access.DATASET_ERROR]}
    study.shared_with.add(other_researcher)
    assert launches(other_researcher, dataset_path=job.path, eval_dataset_path="", eval_steps=0)


def test_admin_roots_open_their_folders_but_not_a_symlink_out_of_them(
    researcher: User, root: Path, settings: Any, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    (models / "llama").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    os.symlink("/etc", models / "escape")
    settings.ARBITER_MODEL_ROOTS = [str(models)]
    settings.ARBITER_DATASET_ROOTS = [str(data)]
    assert launches(researcher, model_name_or_path=str(models / "llama"), dataset_path=str(data / "pairs.jsonl"))
    assert refusal(researcher, model_name_or_path=str(models / "escape" / "ssl")) == {
        "model_name_or_path": [access.MODEL_ERROR]
    }
    # A model root is not a dataset root, and the other way round.
    assert set(refusal(researcher, model_name_or_path=str(data), dataset_path=str(models / "llama"))) == {
        "model_name_or_path",
        "dataset_path",
    }


@pytest.mark.parametrize("value", ["tiny", "gpt2", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B"])
def test_hub_ids_are_accepted_as_models(researcher: User, root: Path, value: str) -> None:
    assert launches(researcher, model_name_or_path=value)


@pytest.mark.parametrize("value", ["../x", "./x", "~/x", "a/b/c", "org/..", "org--x/y", "s3://bucket/never/registered"])
def test_anything_else_is_refused(researcher: User, root: Path, value: str) -> None:
    assert refusal(researcher, model_name_or_path=value) == {"model_name_or_path": [access.MODEL_ERROR]}


def test_a_hub_id_is_not_a_dataset(researcher: User, root: Path) -> None:
    assert refusal(researcher, dataset_path="org/data") == {"dataset_path": [access.DATASET_ERROR]}


def test_s3_artifacts_follow_their_run(researcher: User, other_researcher: User, root: Path) -> None:
    run = Run.objects.create(owner=researcher, name="s3", recipe="dpo", status=RunStatus.SUCCEEDED)
    register_artifact(owner=researcher, kind=ArtifactKind.CHECKPOINT, uri="s3://bucket/runs/7/checkpoint-5", run=run)
    assert launches(researcher, model_name_or_path="s3://bucket/runs/7/checkpoint-5")
    assert refusal(other_researcher, model_name_or_path="s3://bucket/runs/7/checkpoint-5")
    Run.objects.filter(pk=run.pk).update(shared=True)
    assert launches(other_researcher, model_name_or_path="s3://bucket/runs/7/checkpoint-5")


def test_the_launch_form_puts_the_refusal_next_to_the_field(
    researcher: User, other_researcher: User, root: Path, client_for: Any
) -> None:
    private = checkpoint_of(researcher, root)
    answer = client_for(other_researcher).post(
        "/runs/new/?recipe=dpo", {"recipe": "dpo", "cfg_model_name_or_path": private, "queue": "gpu"}
    )
    assert answer.status_code == 422
    assert "Not a model you may use" in answer.content.decode()
    assert not Run.objects.filter(owner=other_researcher).exists()


# --- 12.3: checkpoints a run token reports -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_run_token_records_checkpoints_only_inside_its_run(researcher: User, root: Path) -> None:
    run, token = runs.create_external_run(owner=researcher, name="script", config={})
    other, _ = runs.create_external_run(owner=researcher, name="other", config={})
    inside = root / "runs" / str(run.id) / "checkpoint-3"

    def post(path: str, step: int) -> Any:
        return Client().post(
            f"/api/runs/{run.id}/checkpoints/",
            data=json.dumps({"step": step, "path": path}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )

    for i, outside in enumerate(
        [
            "/etc",
            str(root / "runs" / str(other.id) / "checkpoint-1"),
            str(root / "runs" / str(run.id)),
            f"{inside}/../../{other.id}/x",
            "s3://bucket/runs/1/x",
        ]
    ):
        answer = post(outside, i)
        assert answer.status_code == 400 and answer.json()["field"] == "path", (outside, answer.content)
    os.makedirs(inside.parent)
    os.symlink("/etc", inside)
    assert post(str(inside), 10).status_code == 400  # a symlink inside that leads out
    inside.unlink()
    good = post(str(inside), 11)
    assert good.status_code == 200, good.content
    assert list(run.checkpoints.values_list("step", flat=True)) == [11]
    assert Artifact.objects.get(run=run).uri == f"file://{os.path.realpath(inside)}"


def test_every_path_field_of_every_recipe_is_checked() -> None:
    """A new recipe field that names a file must join the launch check (artifacts.localize.INPUT_FIELDS)."""
    from artifacts.localize import INPUT_FIELDS
    from training.engine.config import RECIPES

    named = {
        name
        for info in RECIPES.values()
        for name in info.config_cls.model_fields
        if name.endswith(("_path", "_name_or_path"))
    }
    assert named <= set(INPUT_FIELDS), named - set(INPUT_FIELDS)
