"""Deletes that the loop's links refuse: a run whose outputs a study judges, a study whose export trained a run."""

from __future__ import annotations

import re
from typing import Any

import pytest

from arbiter import dependants
from arbiter.dependants import HasDependants, dependants_of
from loop.services.policies import policy_for_checkpoint
from tests.loop.conftest import finished_export, judge, sourced_pairwise_study
from training.models import Run
from training.services.runs import launch_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged(researcher: Any, annotator: Any, run_with_checkpoints: Any) -> Any:
    run = run_with_checkpoints(researcher)
    early, late = (policy_for_checkpoint(checkpoint=c) for c in run.checkpoints.order_by("step"))
    study = sourced_pairwise_study(researcher, [(early, late)] * 2, annotators=[annotator], name="early vs late")
    judge(study, annotator, ["b", "a"])
    return run, study


def test_a_run_whose_samples_a_study_judges_is_not_deleted_and_the_page_names_the_study(
    judged: Any, researcher: Any, client_for: Any
) -> None:
    run, study = judged
    response = client_for(researcher).post(f"/runs/{run.id}/delete/")
    assert response.status_code == 409
    html = response.content.decode()
    assert f'<a href="/studies/{study.id}/">study #{study.id} early vs late</a>' in html
    assert "its items were sampled from this run" in html
    assert Run.objects.filter(id=run.id).exists()


def test_a_study_whose_export_trained_a_run_names_that_run(judged: Any, researcher: Any, other_researcher: Any) -> None:
    _, study = judged
    job = finished_export(study, researcher)
    trained = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    found = dependants_of(study, user=researcher)
    assert [(d.label, d.reason) for d in found] == [(f"run #{trained.id} {trained.name}", "trained on its export")]
    # Told to someone who may not see that run, the refusal does not leak its name.
    told = [d.label for d in dependants_of(study, user=other_researcher)]
    assert told == [f"run #{trained.id} of another researcher"]


def test_protect_in_the_database_is_still_a_clear_refusal(judged: Any, researcher: Any) -> None:
    """Without the loop's finder, the export's PROTECT foreign key alone refuses, and is reported the same way."""

    _, study = judged
    job = finished_export(study, researcher)
    launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    saved = dependants._FINDERS.pop("evaluation.Study")
    try:
        with pytest.raises(HasDependants, match="run input"):
            dependants.delete_unless_needed(study, what=f"Study #{study.id}", user=researcher)
    finally:
        dependants._FINDERS["evaluation.Study"] = saved
    study.refresh_from_db()


def test_the_study_page_refuses_with_a_409_listing_the_run_that_trained_on_its_export(
    judged: Any, researcher: Any, client_for: Any
) -> None:
    _, study = judged
    job = finished_export(study, researcher)
    trained = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    response = client_for(researcher).post(f"/studies/{study.pk}/delete/")
    assert response.status_code == 409
    html = response.content.decode()
    assert f'<a href="/runs/{trained.id}/">run #{trained.id} {trained.name}</a>' in html
    assert "trained on its export" in html
    assert type(study).objects.filter(pk=study.pk).exists()


def test_admin_delete_of_that_study_shows_the_run_on_its_cannot_delete_page(
    judged: Any, researcher: Any, admin_user: Any, client_for: Any
) -> None:
    """Django admin deletes through study_records.delete_study too: it lists the run and removes nothing."""
    _, study = judged
    job = finished_export(study, researcher)
    trained = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    admin = client_for(admin_user)
    page = admin.get(f"/admin/evaluation/study/{study.pk}/delete/")
    html = page.content.decode()
    assert page.status_code == 200 and html.count(f"run #{trained.id} {trained.name} (trained on its export)") == 1
    # Said once: the run that needs the study, not also the bare link row its PROTECT foreign key guards.
    refusals = re.search(r'<ul id="deleted-objects">(.*?)</ul>', html, re.S).group(1)  # type: ignore[union-attr]
    assert refusals.count("<li>") == 1 and "Run input:" not in refusals
    admin.post(f"/admin/evaluation/study/{study.pk}/delete/", {"post": "yes"})
    admin.post("/admin/evaluation/study/", {"action": "delete_selected", "_selected_action": [study.pk], "post": "yes"})
    assert type(study).objects.filter(pk=study.pk).exists()


@pytest.mark.parametrize("spelling", ["{head}/./{tail}", "{head}//{tail}", "file://{head}/{tail}"])
def test_a_run_launched_on_another_spelling_of_the_export_still_protects_the_study(
    judged: Any, researcher: Any, spelling: str
) -> None:
    """The launch check resolves `.`, `//` and file:// (so the run reads the export); the link must as well."""
    _, study = judged
    job = finished_export(study, researcher)
    head, _, tail = job.path.rpartition("/")
    value = spelling.format(head=head, tail=tail)
    trained = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": value, "max_steps": 2})
    found = dependants_of(study, user=researcher)
    assert [(d.label, d.reason) for d in found] == [(f"run #{trained.id} {trained.name}", "trained on its export")]
    with pytest.raises(HasDependants):
        dependants.delete_unless_needed(study, what=f"Study #{study.id}", user=researcher)


def test_a_scripts_run_naming_a_shared_export_does_not_pin_the_study(
    judged: Any, researcher: Any, other_researcher: Any, client: Any
) -> None:
    """A run created by a script (POST /api/runs/) keeps its config as unchecked notes and reads nothing on the
    server: a reader of the study must not be able to stop its owner from ever deleting it that way."""
    from training.services.runs import issue_api_token

    _, study = judged
    study.shared_with.add(other_researcher)
    job = finished_export(study, researcher)
    _, key = issue_api_token(user=other_researcher, name="k")
    created = client.post(
        "/api/runs/", {"name": "squat", "config": {"dataset_path": job.path}}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )  # fmt: skip
    assert created.status_code == 201, created.content
    assert dependants_of(study, user=researcher) == []
    dependants.delete_unless_needed(study, what=f"Study #{study.id}", user=researcher)
    assert not type(study).objects.filter(pk=study.pk).exists()
