"""The worker API: a worker credential claims a queued run once, only with the slots it asks for, and acts only on
runs it claimed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from arbiter.accounts.models import User
from training.models import Run, RunStatus
from training.services import runs
from workers.services import issue_worker_credential

pytestmark = pytest.mark.django_db


def post(path: str, token: str, body: dict[str, Any] | None = None) -> Any:
    return Client().post(
        path, data=json.dumps(body or {}), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


@pytest.fixture
def queued(researcher: User) -> Run:
    return Run.objects.create(owner=researcher, name="q", recipe="demo", status=RunStatus.QUEUED, gpus=2)


def test_a_run_is_claimed_once_and_only_with_the_slots_it_asks_for(queued: Run) -> None:
    _, token = issue_worker_credential(name="gpu-a")
    short = post(f"/api/worker/runs/{queued.id}/claim/", token, {"free_slots": 1})
    assert short.status_code == 409 and short.json()["field"] == "free_slots"
    assert Run.objects.get(id=queued.id).status == RunStatus.QUEUED  # handed back, not claimed
    spec = post(f"/api/worker/runs/{queued.id}/claim/", token, {"free_slots": 2})
    assert spec.status_code == 200
    body = spec.json()
    assert (body["run_id"], body["gpus"], body["recipe"]) == (queued.id, 2, "demo")
    assert body["token"].startswith("arb_r_") and body["output_uri"].endswith(f"/runs/{queued.id}")
    run = Run.objects.get(id=queued.id)
    assert (run.status, run.worker) == (RunStatus.RUNNING, "gpu-a")
    assert post(f"/api/worker/runs/{queued.id}/claim/", token, {"free_slots": 8}).status_code == 409


def test_a_worker_acts_only_on_runs_it_claimed(queued: Run) -> None:
    _, mine = issue_worker_credential(name="gpu-a")
    _, theirs = issue_worker_credential(name="gpu-b")
    assert post(f"/api/worker/runs/{queued.id}/claim/", mine, {"free_slots": 4}).status_code == 200
    for action in ("heartbeat", "finish"):
        assert post(f"/api/worker/runs/{queued.id}/{action}/", theirs, {"exit_code": 0}).status_code == 404
    assert post(f"/api/worker/runs/{queued.id}/heartbeat/", mine, {"pid": 42}).json() == {
        "cancel": False,
        "status": "running",
    }
    runs.cancel_run(run=Run.objects.get(id=queued.id), by=queued.owner)
    assert post(f"/api/worker/runs/{queued.id}/heartbeat/", mine).json()["cancel"] is True
    done = post(f"/api/worker/runs/{queued.id}/finish/", mine, {"exit_code": -15, "cancelled": True, "note": "x"})
    assert done.json() == {"status": "cancelled"}
    assert Run.objects.get(id=queued.id).pid == 42


@pytest.mark.parametrize("token", ["", "arb_w_wrong", "arb_r_notaworker"])
def test_without_a_valid_worker_token_nothing_happens(queued: Run, token: str) -> None:
    assert post(f"/api/worker/runs/{queued.id}/claim/", token, {"free_slots": 4}).status_code == 401
    assert Run.objects.get(id=queued.id).status == RunStatus.QUEUED


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("claim", {"free_slots": -1}, "free_slots"),
        ("claim", {"free_slots": "2"}, "free_slots"),
        ("heartbeat", {"pid": 2**40}, "pid"),
        ("finish", {"exit_code": 2**40}, "exit_code"),
        ("finish", {"cancelled": "yes"}, "cancelled"),
        ("finish", {"note": "a\x00b"}, "note"),
        ("finish", {"note": "\ud800"}, "body"),  # a lone surrogate: not JSON (was a 500 storing the note)
        ("hello", {"queues": ["\ud800"]}, "body"),
    ],
)
def test_bad_fields_are_400_naming_them(queued: Run, action: str, body: dict[str, Any], field: str) -> None:
    _, token = issue_worker_credential(name="gpu-a")
    if action not in {"claim", "hello"}:
        post(f"/api/worker/runs/{queued.id}/claim/", token, {"free_slots": 4})
    path = "/api/worker/hello/" if action == "hello" else f"/api/worker/runs/{queued.id}/{action}/"
    answer = post(path, token, body)
    assert (answer.status_code, answer.json().get("field")) == (400, field)


def test_a_revoked_or_rotated_token_stops_working(queued: Run) -> None:
    _, old = issue_worker_credential(name="gpu-a")
    _, new = issue_worker_credential(name="gpu-a", rotate=True)
    assert post("/api/worker/hello/", old, {"queues": ["gpu"], "slots": ["0"]}).status_code == 401
    assert post("/api/worker/hello/", new, {"queues": ["gpu"], "slots": ["0", "1"]}).json() == {"name": "gpu-a"}


def test_a_sampling_job_is_claimed_once_and_reported_only_by_its_worker(
    researcher: User, settings: Any, tmp_path: Any
) -> None:
    from loop.models import SampleJob, SampleStatus
    from loop.services.sampling import sample_set_dir

    settings.ARTIFACT_ROOT = tmp_path
    job = SampleJob.objects.create(owner=researcher, name="s", study_kind="pairwise", total=4)
    sample_set_dir(job.pk).mkdir(parents=True)
    (sample_set_dir(job.pk) / "prompts.jsonl").write_text('{"prompt": "p"}\n')
    _, mine = issue_worker_credential(name="gpu-a")
    _, theirs = issue_worker_credential(name="gpu-b")
    spec = post(f"/api/worker/samples/{job.pk}/claim/", mine)
    assert spec.status_code == 200 and spec.json()["prompts_uri"].endswith(f"/samples/job-{job.pk}/prompts.jsonl")
    assert post(f"/api/worker/samples/{job.pk}/claim/", theirs).status_code == 409
    assert post(f"/api/worker/samples/{job.pk}/progress/", theirs, {"done": 1}).status_code == 404
    assert post(f"/api/worker/samples/{job.pk}/progress/", mine, {"done": 2}).json() == {"cancel": False}
    assert post(f"/api/worker/samples/{job.pk}/finish/", mine, {"ok": "yes"}).json()["field"] == "ok"
    failed = post(f"/api/worker/samples/{job.pk}/finish/", mine, {"ok": False, "error": "out of memory"})
    assert failed.json() == {"status": "failed"}
    job.refresh_from_db()
    assert (job.status, job.done, job.error) == (SampleStatus.FAILED, 2, "out of memory")


def test_a_launch_asking_more_gpus_than_any_worker_on_its_queue_has_is_refused(researcher: User) -> None:
    from django.core.exceptions import ValidationError

    demo = {"max_steps": 1}
    assert runs.launch_run(owner=researcher, recipe="demo", config=demo, gpus=8).gpus == 8  # no worker known yet
    _, token = issue_worker_credential(name="gpu-a")
    post("/api/worker/hello/", token, {"queues": ["gpu"], "slots": ["0", "1"]})
    with pytest.raises(ValidationError) as info:
        runs.launch_run(owner=researcher, recipe="demo", config=demo, gpus=4)
    assert list(info.value.message_dict) == ["gpus"]
    assert runs.launch_run(owner=researcher, recipe="demo", config=demo, gpus=2).gpus == 2
