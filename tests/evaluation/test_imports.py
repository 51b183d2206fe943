"""The import service: all or nothing, staged then published, inline or on a real Celery worker with progress;
ST-WebAgentBench's task file, trajectories, leaderboard evidence and evaluator output."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from evaluation import services
from evaluation.models import AutomaticJudgment, ImportJob, ImportRow, ImportStatus, Item, Judgment
from tests.evaluation.conftest import jsonl, pairwise_row

DATA = Path(__file__).parent / "data"
TASKS = DATA / "stwebagentbench_test_raw_sample.json"
TASKS_2024 = DATA / "stwebagentbench_2024_test_raw_sample.json"
EVALUATOR_CSV = DATA / "STBenchDemo_agent_full_res_sample.csv"


def test_one_bad_row_refuses_the_whole_file_and_leaves_nothing_staged(make_study) -> None:
    study = make_study(n_items=0)
    rows = [pairwise_row(i) for i in range(5)] + [{"prompt": "p", "chosen": "a"}]
    with pytest.raises(services.ImportRejected) as info:
        services.import_items(study=study, data=jsonl(rows))
    assert info.value.error_count == 1 and info.value.valid_count == 5
    assert (info.value.errors[0].line, info.value.errors[0].field) == (6, "rejected")
    assert Item.objects.filter(study=study).count() == 0 and not ImportRow.objects.exists()
    assert ImportJob.objects.get(study=study).status == ImportStatus.REJECTED


def test_valid_rows_imported_when_asked(make_study) -> None:
    study = make_study(n_items=0)
    rows = [pairwise_row(0), {"prompt": "p"}, pairwise_row(1)]
    report = services.import_items(study=study, data=jsonl(rows), import_valid_rows=True)
    assert report.created == 2 and report.skipped_count == 1 and report.skipped_rows[0].line == 2
    assert list(Item.objects.filter(study=study).values_list("payload__prompt", flat=True)) == [
        "Question 0?",
        "Question 1?",
    ]


def test_wrong_container_is_refused_with_one_message(make_study) -> None:
    study = make_study(n_items=0)
    with pytest.raises(services.ImportRejected) as info:
        services.import_items(study=study, data=json.dumps({"rows": [pairwise_row(0)]}, indent=1).encode())
    assert info.value.error_count == 1 and "one JSON object" in info.value.message


def test_second_upload_appends_after_the_first(make_study) -> None:
    study = make_study(n_items=2)
    services.import_items(study=study, data=jsonl([pairwise_row(7)]))
    positions = list(Item.objects.filter(study=study).order_by("position").values_list("payload__prompt", flat=True))
    assert positions == ["Question 0?", "Question 1?", "Question 7?"] and study.item_count == 3


def test_upload_form_reports_a_json_array(client_for, researcher, make_study) -> None:
    study = make_study(n_items=0)
    upload = SimpleUploadedFile("items.jsonl", json.dumps([pairwise_row(0), pairwise_row(1)]).encode())
    response = client_for(researcher).post(reverse("evaluation:items_upload", args=[study.pk]), {"file": upload})
    assert response.status_code == 200
    assert "Imported 2 items from json" in response.content.decode()


def test_upload_form_names_line_and_field_with_422(client_for, researcher, make_study) -> None:
    study = make_study(n_items=0)
    upload = SimpleUploadedFile("items.csv", b"prompt,chosen,rejected\nq,a,b\nq,a,\n")
    response = client_for(researcher).post(reverse("evaluation:items_upload", args=[study.pk]), {"file": upload})
    assert response.status_code == 422
    assert "line 3, field &#x27;rejected&#x27;" in response.content.decode()


def _wait_finished(job_id: int, timeout: float = 30) -> ImportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = ImportJob.objects.get(pk=job_id)
        if job.finished:
            return job
        time.sleep(0.1)
    raise AssertionError(f"import {job_id} did not finish")


def test_large_upload_runs_on_a_real_worker_with_progress(
    celery_worker_app, client_for, researcher, make_study, settings, tmp_path
) -> None:
    settings.ARTIFACT_ROOT = tmp_path
    settings.EVALUATION_IMPORT_BACKGROUND_BYTES = 1000
    study = make_study(n_items=0)
    data = jsonl([pairwise_row(i) for i in range(3000)])
    client = client_for(researcher)
    url = reverse("evaluation:items_upload", args=[study.pk])
    response = client.post(url, {"file": SimpleUploadedFile("big.jsonl", data)})
    assert response.status_code == 302 and "?job=" in response["Location"]
    job = _wait_finished(ImportJob.objects.get(study=study).pk)
    assert job.status == ImportStatus.DONE and job.created_items == 3000 and job.rows_read == 3000
    assert job.bytes_read == len(data) and job.percent == 100
    assert Item.objects.filter(study=study).count() == 3000
    deadline = time.monotonic() + 10
    while Path(job.path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(job.path).exists()  # the stored upload is removed once read
    status = client.get(reverse("evaluation:import_status", args=[study.pk, job.pk])).content.decode()
    assert "Imported · 3000 rows read · 100%" in status and "hx-trigger" not in status


def test_import_status_polls_while_running(client_for, researcher, make_study) -> None:
    study = make_study(n_items=0)
    job = ImportJob.objects.create(
        study=study, requested_by=researcher, status=ImportStatus.RUNNING, size_bytes=1000, bytes_read=250
    )
    html = client_for(researcher).get(reverse("evaluation:import_status", args=[study.pk, job.pk])).content.decode()
    assert 'hx-trigger="every 1s"' in html and "25%" in html and "<html" not in html


def test_redelivered_import_does_nothing(make_study, settings, tmp_path) -> None:
    settings.ARTIFACT_ROOT = tmp_path
    study = make_study(n_items=0)
    job = services.start_import(study=study, data=jsonl([pairwise_row(0)]), filename="a.jsonl")
    assert services.run_import(import_id=job.pk) is not None
    assert services.run_import(import_id=job.pk) is None
    assert Item.objects.filter(study=study).count() == 1


# --------------------------------------------------------------------------- ST-WebAgentBench


def _violation_study(make_study, **kwargs):
    return make_study(kind="violation", n_items=0, **kwargs)


def test_task_file_as_published_makes_waiting_items(make_study, annotator) -> None:
    study = _violation_study(make_study, annotators=[annotator])
    report = services.import_items(study=study, data=TASKS.read_bytes(), filename="test.raw.json")
    assert report.created == 4 and report.waiting == 4 and report.container == "json"
    assert services.next_assignment(annotator=annotator, study=study) is None  # nothing to judge yet
    item = Item.objects.filter(study=study).order_by("position").first()
    assert item.payload["task_id"] == "0" and len(item.payload["policies"]) == 14 and item.overlap == 0


def test_trajectories_keyed_by_task_id_release_waiting_items(make_study, annotator) -> None:
    study = _violation_study(make_study, annotators=[annotator])
    services.import_items(study=study, data=TASKS.read_bytes())
    steps = [
        {"action": "click('a1')", "observation": "Projects"},
        {"action": "fill('b2', 'planner')", "observation": ""},
    ]
    trajectories = [
        {"task_id": 0, "agent": "agent-x", "trajectory": steps},
        {"task_id": 0, "agent": "agent-y", "trajectory": steps[:1]},
    ]
    report = services.import_items(study=study, data=jsonl(trajectories))
    assert report.attached == 2 and report.created == 0
    ready = Item.objects.filter(study=study, waiting=False).order_by("position")
    assert [(i.payload["agent"], len(i.payload["trajectory"])) for i in ready] == [("agent-x", 2), ("agent-y", 1)]
    assert services.next_assignment(annotator=annotator, study=study).item.payload["task_id"] == "0"


def test_trajectory_for_an_unknown_task_is_refused(make_study) -> None:
    study = _violation_study(make_study)
    services.import_items(study=study, data=TASKS.read_bytes())
    with pytest.raises(services.ImportRejected) as info:
        services.import_items(study=study, data=jsonl([{"task_id": 999, "trajectory": [{"action": "noop()"}]}]))
    assert info.value.errors[0].field == "task_id" and "task 999 is not in this study" in info.value.errors[0].message


def test_evaluator_output_is_a_separate_automatic_judge(make_study) -> None:
    study = _violation_study(make_study)
    services.import_items(study=study, data=TASKS_2024.read_bytes())
    report = services.import_items(study=study, data=EVALUATOR_CSV.read_bytes(), filename=EVALUATOR_CSV.name)
    assert report.verdicts == 3 and report.container == "evaluator_csv"
    assert not Judgment.objects.filter(study=study).exists()  # never mixed with people's judgments
    verdicts = {a.item.payload["task_id"]: a.payload for a in AutomaticJudgment.objects.select_related("item")}
    assert verdicts["0"]["completion"] == "none" and verdicts["0"]["violations"] == []
    # Task 1: completed, its second "consent" policy failed.
    assert verdicts["1"]["completion"] == "full"
    assert verdicts["1"]["violations"] == [{"step": None, "policy": 1, "dimension": "user_consent"}]


def test_evaluator_output_for_other_policies_is_refused(make_study) -> None:
    # The 2024 evaluator output has 8 policies per task; today's task file has 14 for task 0.
    study = _violation_study(make_study)
    services.import_items(study=study, data=TASKS.read_bytes())
    with pytest.raises(services.ImportRejected) as info:
        services.import_items(study=study, data=EVALUATOR_CSV.read_bytes())
    assert "covers 8 policies but task 0 has 14" in info.value.errors[0].message


def _submission(tasks: list[dict]) -> dict:
    """A leaderboard submission in the shape of stwebagentbench/leaderboard/schema.py (Submission)."""
    evidence = []
    for task in tasks:
        actions = [
            {"step": 0, "action_type": "click", "action_args": ["a51"], "element_text": "New project",
             "observed_url": "http://gitlab/projects/new", "timestamp": 1.0},
            {"step": 1, "action_type": "fill", "action_args": ["b12", "planner"], "element_text": "Project name",
             "observed_url": "http://gitlab/projects/new", "timestamp": 2.0},
        ]  # fmt: skip
        report = [
            {"policy_index": i, "policy_template_id": p["policy_template_id"], "policy_category": p["policy_category"],
             "source": p["source"], "violated": i == 0, "dormant": i == 2, "violating_step": 1 if i == 0 else None}
            for i, p in enumerate(task["policies"])
        ]  # fmt: skip
        evidence.append(
            {"task_id": task["task_id"], "total_reward": 0.0, "satisfied_requirements": 1, "total_requirements": 2,
             "safety_report": report, "action_sequence": actions, "visited_urls": [], "start_time": "",
             "end_time": "", "num_steps": 2, "trajectory_hash": "x"}
        )  # fmt: skip
    return {"schema_version": "1.0", "metadata": {"agent_id": "my-agent-v1"}, "task_evidence": evidence}


def test_leaderboard_evidence_is_the_trajectory_and_an_automatic_verdict(make_study, annotator) -> None:
    study = _violation_study(make_study, annotators=[annotator])
    tasks = json.loads(TASKS.read_text())
    services.import_items(study=study, data=TASKS.read_bytes())
    submission = json.dumps(_submission(tasks[:2]), indent=2).encode()
    report = services.import_items(study=study, data=submission, filename="submission.json")
    assert report.attached == 2 and report.verdicts == 2 and report.container == "submission"
    item = Item.objects.get(study=study, payload__task_id="0", payload__agent="my-agent-v1")
    assert not item.waiting and item.payload["trajectory"][1] == {
        "action": "fill('b12', 'planner')",
        "observation": "",
        "element": "Project name",
        "url": "http://gitlab/projects/new",
        "step": 1,
    }
    verdict = AutomaticJudgment.objects.get(item=item).payload
    assert verdict["completion"] == "partial" and verdict["fraction"] == 0.5
    assert verdict["violations"] == [{"step": 1, "policy": 0, "dimension": "user_consent"}]
    assert verdict["dormant"] == [2]


def test_the_same_task_file_twice_is_refused_by_line(make_study) -> None:
    study = _violation_study(make_study)
    services.import_items(study=study, data=TASKS.read_bytes())
    with pytest.raises(services.ImportRejected) as info:
        services.import_items(study=study, data=TASKS.read_bytes())
    assert info.value.error_count == 4 and info.value.errors[0].field == "task_id"
    assert "task 0 is already in this study" in info.value.errors[0].message
    assert Item.objects.filter(study=study).count() == 4


@pytest.mark.parametrize(
    ("filename", "data", "says"),
    [
        ("items.jsonl.gz", gzip.compress(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 50)[:-12], "gzip"),
        ("items.jsonl.gz", b"\x1f\x8b\x08\x00garbage-after-the-magic", "gzip"),
        ("items.json", b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]", "nested too deeply"),
    ],
)
def test_a_damaged_gzip_or_a_too_deep_json_array_is_a_422_saying_so(
    client_for: Any, researcher: Any, make_study: Any, filename: str, data: bytes, says: str
) -> None:
    study = make_study(n_items=0)
    upload = SimpleUploadedFile(filename, data)
    response = client_for(researcher).post(reverse("evaluation:items_upload", args=[study.pk]), {"file": upload})
    assert response.status_code == 422 and says in response.content.decode()
    assert not Item.objects.filter(study=study).exists()
