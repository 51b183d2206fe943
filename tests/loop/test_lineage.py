"""Lineage both ways: study → export version (hash) → run that trained on it → checkpoints → studies that judged
them; an export that a run used cannot be deleted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from evaluation import export
from evaluation.models import ExportJob
from loop.models import RunInput
from loop.services.policies import policy_for_checkpoint
from tests.factories import UserFactory
from tests.loop.conftest import finished_export, judge, sourced_pairwise_study
from training.models import Checkpoint
from training.services.runs import launch_run, retry_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def judged_study(researcher: Any, annotator: Any, run_with_checkpoints: Any) -> Any:
    run = run_with_checkpoints(researcher)
    early, late = (policy_for_checkpoint(checkpoint=c) for c in run.checkpoints.order_by("step"))
    study = sourced_pairwise_study(researcher, [(early, late)] * 4, annotators=[annotator], name="early vs late")
    judge(study, annotator, ["b", "b", "a", "b"])
    return run, study


def test_export_records_the_sha256_of_its_file(judged_study: Any, researcher: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    data = Path(job.path).read_bytes()
    assert job.sha256 == hashlib.sha256(data).hexdigest()
    manifest = json.loads((Path(job.path).parent / "manifest.json").read_text())
    assert manifest["sha256"] == job.sha256


def test_a_run_launched_on_an_export_is_linked_to_it_and_so_is_its_retry(judged_study: Any, researcher: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    run = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    link = RunInput.objects.get(run=run)
    assert (link.export_id, link.field) == (job.pk, "dataset_path")
    again = retry_run(run=run, by=researcher)
    assert RunInput.objects.get(run=again).export_id == job.pk


def test_a_run_on_an_export_its_owner_cannot_see_is_refused_and_not_linked(judged_study: Any, researcher: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    stranger = UserFactory()
    with pytest.raises(ValidationError) as info:  # issue 12.1: a run reads only what its owner may read
        launch_run(owner=stranger, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})
    assert set(info.value.message_dict) == {"dataset_path"}
    assert not RunInput.objects.exists()


def test_an_export_a_run_trained_on_cannot_be_deleted(judged_study: Any, researcher: Any, client_for: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    run = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2})

    with pytest.raises(Exception, match=rf"run #{run.pk} trained on it"):
        export.delete_export(job=job)
    with pytest.raises(ProtectedError):  # the database's own refusal, whatever path tries
        ExportJob.objects.get(pk=job.pk).delete()
    with pytest.raises(ProtectedError):
        study.delete()

    response = client_for(researcher).post(f"/studies/{study.pk}/export/{job.pk}/delete/")
    assert response.status_code == 409
    assert f"run #{run.pk} trained on it" in response.content.decode()
    assert ExportJob.objects.filter(pk=job.pk).exists() and Path(job.path).is_file()


def test_an_unused_export_is_deleted_with_its_files(judged_study: Any, researcher: Any, client_for: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    folder = Path(job.path).parent
    assert folder.name == f"v{job.version}" and (folder / "manifest.json").exists()
    response = client_for(researcher).post(f"/studies/{study.pk}/export/{job.pk}/delete/")
    assert response.status_code == 302
    assert not ExportJob.objects.filter(pk=job.pk).exists()
    assert not folder.exists()


def test_only_the_owner_deletes_an_export(judged_study: Any, researcher: Any, client_for: Any) -> None:
    _, study = judged_study
    job = finished_export(study, researcher)
    viewer = UserFactory()
    study.shared_with.add(viewer)
    assert client_for(viewer).post(f"/studies/{study.pk}/export/{job.pk}/delete/").status_code == 403
    assert client_for(UserFactory()).post(f"/studies/{study.pk}/export/{job.pk}/delete/").status_code == 404
    assert ExportJob.objects.filter(pk=job.pk).exists()


def _loop_setup(researcher: Any, annotator: Any, run_with_checkpoints: Any, judged_study: Any) -> dict[str, Any]:
    """study 1 (run 1's checkpoints) → export → run 2 → its checkpoint → study 2 (run 2 vs run 1)."""
    run1, study1 = judged_study
    job = finished_export(study1, researcher)
    run2 = launch_run(owner=researcher, recipe="dpo", config={"dataset_path": job.path, "max_steps": 2}, name="dpo")
    ckpt = Checkpoint.objects.create(run=run2, step=5, path="runs/dpo/checkpoint-5")
    late = policy_for_checkpoint(checkpoint=run1.checkpoints.get(step=20))
    study2 = sourced_pairwise_study(
        researcher, [(policy_for_checkpoint(checkpoint=ckpt), late)] * 2, annotators=[annotator], name="dpo vs grpo"
    )
    judge(study2, annotator, ["a", "a"])
    return {"run1": run1, "study1": study1, "export": job, "run2": run2, "study2": study2}


def test_lineage_api_walks_from_study_to_the_studies_that_judged_what_it_trained(
    researcher: Any, annotator: Any, run_with_checkpoints: Any, judged_study: Any, client_for: Any
) -> None:
    s = _loop_setup(researcher, annotator, run_with_checkpoints, judged_study)
    client = client_for(researcher)

    body = client.get(f"/api/lineage/studies/{s['study1'].pk}/").json()
    assert [p["label"] for p in body["policies"]] == [f"#{s['run1'].pk} grpo-demo @ step {n}" for n in (10, 20)]
    assert {p["run"]["id"] for p in body["policies"]} == {s["run1"].pk}
    (exp,) = body["exports"]
    assert (exp["id"], exp["sha256"], exp["version"]) == (s["export"].pk, s["export"].sha256, 1)
    (trained,) = exp["runs"]
    assert trained["id"] == s["run2"].pk
    (step5,) = trained["checkpoints"]
    assert step5["step"] == 5 and [x["id"] for x in step5["judged_in"]] == [s["study2"].pk]

    body = client.get(f"/api/lineage/runs/{s['run2'].pk}/").json()
    (inp,) = body["trained_on"]
    assert inp["field"] == "dataset_path" and inp["export"]["sha256"] == s["export"].sha256
    assert inp["study"]["id"] == s["study1"].pk
    assert body["checkpoints"][0]["judged_in"][0]["url"] == f"/studies/{s['study2'].pk}/"

    body = client.get(f"/api/lineage/runs/{s['run1'].pk}/").json()
    judged = {c["step"]: [x["id"] for x in c["judged_in"]] for c in body["checkpoints"]}
    assert judged == {10: [s["study1"].pk], 20: [s["study1"].pk, s["study2"].pk]}

    # The same links as pages: the run page's and the study page's lineage cards.
    html = client.get(f"/lineage/runs/{s['run2'].pk}/").content.decode()
    assert f"/studies/{s['study1'].pk}/export/" in html and s["export"].sha256[:12] in html
    assert f"/studies/{s['study2'].pk}/results/" in html
    html = client.get(f"/lineage/studies/{s['study1'].pk}/").content.decode()
    assert f"/runs/{s['run2'].pk}/" in html and f"/runs/{s['run1'].pk}/" in html


def test_lineage_leaves_out_what_the_reader_may_not_see(
    researcher: Any, annotator: Any, run_with_checkpoints: Any, judged_study: Any, client_for: Any
) -> None:
    s = _loop_setup(researcher, annotator, run_with_checkpoints, judged_study)
    viewer = UserFactory()
    s["study2"].shared_with.add(viewer)  # a shared study, but neither run nor the first study
    client = client_for(viewer)
    assert client.get(f"/api/lineage/runs/{s['run2'].pk}/").status_code == 404
    body = client.get(f"/api/lineage/studies/{s['study2'].pk}/").json()
    assert all(p["run"] is None and p["model_path"] == "" for p in body["policies"])
    assert client.get(f"/api/lineage/studies/{s['study1'].pk}/").status_code == 404

    s["run2"].shared = True
    s["run2"].save()
    body = client.get(f"/api/lineage/runs/{s['run2'].pk}/").json()
    assert body["trained_on"][0]["study"] is None  # the export is named (with its hash), its study is not
    assert [x["id"] for x in body["checkpoints"][0]["judged_in"]] == [s["study2"].pk]


def test_lineage_api_takes_an_api_key(researcher: Any, run_with_checkpoints: Any, client_for: Any) -> None:
    from training.services.runs import issue_api_token

    run = run_with_checkpoints(researcher)
    _, key = issue_api_token(user=researcher, name="k")
    anonymous = client_for(None)
    assert anonymous.get(f"/api/lineage/runs/{run.pk}/").status_code == 401
    response = anonymous.get(f"/api/lineage/runs/{run.pk}/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response.json()["run"]["id"] == run.pk
