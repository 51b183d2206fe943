"""Exports: judgments as JSONL / CSV, reward data as a versioned dataset, run by a real Celery worker."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from django.urls import reverse

from evaluation import export, services
from evaluation.models import ExportJob, ExportStatus
from tests.evaluation.conftest import pairwise_row


def _judge(study, person, choices):
    for choice in choices:
        a = services.next_assignment(annotator=person, study=study)
        # Data in the shown order: pick the side that shows the wanted canonical response.
        shown = "tie" if choice == "tie" else ("left" if (choice == "a") != a.swapped else "right")
        services.submit_judgment(annotator=person, assignment_id=a.pk, data={"choice": shown})


@pytest.mark.parametrize(("keep_ties", "rows"), [(False, 2), (True, 3)])
def test_pairwise_reward_rows_follow_the_verdict(make_study, annotator, keep_ties, rows) -> None:
    study = make_study(n_items=3, annotators=[annotator])
    _judge(study, annotator, ["a", "b", "tie"])
    out = list(export.reward_rows(study, keep_ties=keep_ties))
    assert len(out) == rows
    assert out[0] == {"prompt": "Question 0?", "chosen": "Answer **A0**", "rejected": "Answer _B0_"}
    assert out[1] == {"prompt": "Question 1?", "chosen": "Answer _B1_", "rejected": "Answer **A1**"}


def test_rubric_violation_and_rating_reward_rows(make_study, annotator) -> None:
    rubric = make_study(kind="rubric", n_items=1, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=rubric)
    verdicts = [["satisfied", "not_satisfied", "unclear"], ["satisfied"] * 3]
    services.submit_judgment(annotator=annotator, assignment_id=a.pk, data={"verdicts": verdicts, "preference": "tie"})
    plan_rows = list(export.reward_rows(rubric))
    scores = sorted(r["score"] for r in plan_rows)
    assert scores == [0.5, 1.0]

    violation = make_study(kind="violation", n_items=1, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=violation)
    services.submit_judgment(
        annotator=annotator, assignment_id=a.pk, data={"completion": "full", "violations": [(2, 1)]}
    )
    (row,) = export.reward_rows(violation)
    assert row["penalty"] == 1 and row["violations"] == {"boundary_and_scope_limitation": 1}
    assert row["cup"] == 0 and row["completion"] == 1.0

    rating = make_study(kind="rating", n_items=1, annotators=[annotator])
    a = services.next_assignment(annotator=annotator, study=rating)
    services.submit_judgment(annotator=annotator, assignment_id=a.pk, data={"rating": 5})
    (row,) = export.reward_rows(rating)
    assert row["score"] == 1.0


def _wait_done(job_id: int, timeout: float = 60) -> ExportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ExportJob.objects.get(pk=job_id)
        if job.status in (ExportStatus.DONE, ExportStatus.FAILED):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"export {job_id} did not finish")


@pytest.mark.django_db(transaction=True)
def test_exports_run_on_a_real_worker(
    celery_worker_app, client_for, researcher, annotator, make_study, settings, tmp_path
) -> None:
    settings.ARTIFACT_ROOT = tmp_path
    study = make_study(rows=[pairwise_row(i) for i in range(4)], annotators=[annotator])
    _judge(study, annotator, ["a", "b", "a", "tie"])
    client = client_for(researcher)
    url = reverse("evaluation:export", kwargs={"study_id": study.pk})
    for fmt in ("judgments_jsonl", "judgments_csv", "reward", "reward"):
        assert client.post(url, {"format": fmt}).status_code == 302
    jobs = [_wait_done(j.pk) for j in ExportJob.objects.filter(study=study).order_by("id")]
    assert [j.status for j in jobs] == [ExportStatus.DONE] * 4
    lines = Path(jobs[0].path).read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["judgment"]["choice"] == "a"
    with Path(jobs[1].path).open() as fh:
        assert [r["verdict"] for r in csv.DictReader(fh)] == ["a", "b", "a", "tie"]
    # Each reward export is a new dataset version (two workers may finish them in either order).
    assert sorted(j.version for j in jobs[2:]) == [1, 2]
    latest = max(jobs[2:], key=lambda j: j.version)
    manifest = json.loads((Path(latest.path).parent / "manifest.json").read_text())
    assert (
        manifest["rows"] == 3 and manifest["version"] == 2 and manifest["columns"] == ["prompt", "chosen", "rejected"]
    )
    page = client.get(url).content.decode()
    assert "Train on this" in page and "recipe=dpo" in page
    download = client.get(reverse("evaluation:export_download", kwargs={"study_id": study.pk, "export_id": jobs[0].pk}))
    assert download.status_code == 200 and b"".join(download).count(b"\n") == 4


def test_redelivered_export_does_nothing(make_study, annotator, settings, tmp_path) -> None:
    settings.ARTIFACT_ROOT = tmp_path
    study = make_study(n_items=1, annotators=[annotator])
    job = ExportJob.objects.create(study=study, requested_by=study.owner, format="reward")
    assert export.run_export(export_id=job.pk) is not None
    assert export.run_export(export_id=job.pk) is None


def test_export_status_partial_polls_until_done(client_for, researcher, make_study) -> None:
    study = make_study(n_items=1)
    job = ExportJob.objects.create(
        study=study, requested_by=researcher, format="reward", total=10, done=5, status="running"
    )
    url = reverse("evaluation:export_status", kwargs={"study_id": study.pk, "export_id": job.pk})
    html = client_for(researcher).get(url).content.decode()
    assert 'hx-trigger="every 1s"' in html and "50%" in html and "<html" not in html


FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("payload", FORMULAS)
def test_csv_export_escapes_formulas(make_study, annotator, settings, tmp_path, payload) -> None:
    """OWASP CSV injection: a cell starting with = + - @ tab or CR gets a leading quote, then reads as text."""
    settings.ARTIFACT_ROOT = tmp_path
    annotator.username = payload[:1] + "anna"
    annotator.save()
    study = make_study(rows=[pairwise_row(0, id=payload)], annotators=[annotator])
    _judge(study, annotator, ["a"])
    job = ExportJob.objects.create(study=study, requested_by=study.owner, format="judgments_csv")
    done = export.run_export(export_id=job.pk)
    with Path(done.path).open(newline="", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["external_id"] == "'" + payload
    assert row["annotator"] == "'" + annotator.username
    for value in row.values():
        assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    assert row["judgment_id"].isdigit()  # numbers the export writes stay numbers
